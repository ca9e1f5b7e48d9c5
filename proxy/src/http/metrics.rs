//! Istio's HTTP request metrics: `istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_request_bytes` and
//! `istio_response_bytes`, for `reporter="source"` (outbound) and
//! `reporter="destination"` (inbound), with Istio's labels.
//!
//! One [`HttpMetrics`] for the process (the worker threads share it); the lead appends
//! [`HttpMetrics::render`] to `/stats/prometheus`. A request is counted once, when its
//! response ends (or is abandoned), by one hash-map look-up under a lock: the key is
//! made of reference-counted, pre-rendered label sets ([`PeerLabels`],
//! [`ServiceLabels`]) whose hash is computed once, when the config is compiled (or a
//! connection starts; an mTLS connection's [`Principals`] when it is made), so a
//! request allocates nothing here. The number of series is
//! bounded ([`MAX_SERIES`]); requests that would open more are counted in
//! `mesh_proxy_http_series_dropped_total` instead.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_common::prom::{self, Kind};
use mesh_config::PeerMeta;

use crate::config::{Identity, UNKNOWN};
use crate::direction::Direction;

/// At most this many label sets; beyond, requests are dropped from the Istio series.
pub const MAX_SERIES: usize = 1024;

/// Envoy's default histogram bounds, which Istio's three request histograms use
/// (milliseconds for the duration, bytes for the sizes).
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Envoy's response flags, as a set. Rendered in Envoy's order, comma separated, `-`
/// when empty.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(u16);

impl Flags {
    pub const NONE: Flags = Flags(0);
    /// No healthy upstream.
    pub const UH: Flags = Flags(1);
    /// Upstream request timeout.
    pub const UT: Flags = Flags(1 << 1);
    /// Upstream connection failure.
    pub const UF: Flags = Flags(1 << 2);
    /// Upstream connection termination.
    pub const UC: Flags = Flags(1 << 3);
    /// Upstream overflow (circuit breaking).
    pub const UO: Flags = Flags(1 << 4);
    /// No route.
    pub const NR: Flags = Flags(1 << 5);
    /// Delay injected (fault).
    pub const DI: Flags = Flags(1 << 6);
    /// Abort injected (fault).
    pub const FI: Flags = Flags(1 << 7);
    /// Downstream connection termination.
    pub const DC: Flags = Flags(1 << 8);
    /// Upstream retry limit exceeded.
    pub const URX: Flags = Flags(1 << 9);
    /// No cluster found.
    pub const NC: Flags = Flags(1 << 10);

    const ORDER: [(Flags, &'static str); 11] = [
        (Flags::UH, "UH"),
        (Flags::UT, "UT"),
        (Flags::UF, "UF"),
        (Flags::UC, "UC"),
        (Flags::UO, "UO"),
        (Flags::NR, "NR"),
        (Flags::DI, "DI"),
        (Flags::FI, "FI"),
        (Flags::DC, "DC"),
        (Flags::URX, "URX"),
        (Flags::NC, "NC"),
    ];

    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for Flags {
    fn bitor_assign(&mut self, rhs: Flags) {
        self.0 |= rhs.0;
    }
}

impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut first = true;
        for (flag, name) in Flags::ORDER {
            if self.contains(flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

fn hash_of(parts: &[&str]) -> u64 {
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

fn label(v: &str) -> String {
    if v.is_empty() {
        UNKNOWN.to_owned()
    } else {
        prom::escape_label_value(v)
    }
}

/// One side's workload labels (`source_*` or `destination_*`), escaped, with their hash
/// computed once.
#[derive(Debug, Clone)]
pub struct PeerLabels {
    hash: u64,
    pub workload: String,
    pub namespace: String,
    pub principal: String,
    pub app: String,
    pub version: String,
    pub canonical_service: String,
    pub canonical_revision: String,
}

impl PeerLabels {
    fn new(fields: [String; 7]) -> PeerLabels {
        let [
            workload,
            namespace,
            principal,
            app,
            version,
            canonical_service,
            canonical_revision,
        ] = fields;
        let hash = hash_of(&[
            &workload,
            &namespace,
            &principal,
            &app,
            &version,
            &canonical_service,
            &canonical_revision,
        ]);
        PeerLabels {
            hash,
            workload,
            namespace,
            principal,
            app,
            version,
            canonical_service,
            canonical_revision,
        }
    }

    /// A peer the config describes. Without mTLS its principal is not known.
    pub fn of_meta(m: &PeerMeta) -> PeerLabels {
        PeerLabels::new([
            label(&m.workload),
            label(&m.namespace),
            UNKNOWN.to_owned(),
            label(&m.app),
            label(&m.version),
            label(&m.canonical_service),
            label(&m.canonical_revision),
        ])
    }

    /// This proxy itself, from what the injector told it.
    pub fn of_identity(id: &Identity) -> PeerLabels {
        let opt = |v: &Option<String>| label(v.as_deref().unwrap_or(UNKNOWN));
        PeerLabels::new([
            label(&id.workload),
            label(&id.namespace),
            UNKNOWN.to_owned(),
            opt(&id.app),
            opt(&id.version),
            opt(&id.canonical_service),
            opt(&id.canonical_revision),
        ])
    }

    pub fn unknown() -> PeerLabels {
        PeerLabels::new(std::array::from_fn(|_| UNKNOWN.to_owned()))
    }

    /// `side_workload=..,side_workload_namespace=..,side_principal=..,side_app=..,side_version=..`,
    /// the principal `principal` when the connection's mTLS says it, else ours.
    pub(crate) fn write_head(&self, out: &mut String, side: &str, principal: Option<&str>) {
        use std::fmt::Write;
        let _ = write!(
            out,
            "{side}_workload=\"{}\",{side}_workload_namespace=\"{}\",{side}_principal=\"{}\",{side}_app=\"{}\",{side}_version=\"{}\"",
            self.workload,
            self.namespace,
            principal.unwrap_or(&self.principal),
            self.app,
            self.version
        );
    }

    pub(crate) fn write_canonical(&self, out: &mut String, side: &str) {
        use std::fmt::Write;
        let _ = write!(
            out,
            "{side}_canonical_service=\"{}\",{side}_canonical_revision=\"{}\"",
            self.canonical_service, self.canonical_revision
        );
    }

    pub(crate) fn fields(&self) -> [&str; 7] {
        [
            &self.workload,
            &self.namespace,
            &self.principal,
            &self.app,
            &self.version,
            &self.canonical_service,
            &self.canonical_revision,
        ]
    }
}

impl PartialEq for PeerLabels {
    fn eq(&self, o: &PeerLabels) -> bool {
        self.hash == o.hash && self.fields() == o.fields()
    }
}
impl Eq for PeerLabels {}
impl Hash for PeerLabels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// `destination_service`, `destination_service_name`, `destination_service_namespace`,
/// escaped, with their hash computed once.
#[derive(Debug, Clone)]
pub struct ServiceLabels {
    hash: u64,
    pub service: String,
    pub name: String,
    pub namespace: String,
}

impl ServiceLabels {
    pub fn new(host: &str, name: &str, namespace: &str) -> ServiceLabels {
        let (service, name, namespace) = (label(host), label(name), label(namespace));
        ServiceLabels {
            hash: hash_of(&[&service, &name, &namespace]),
            service,
            name,
            namespace,
        }
    }

    /// Traffic to no known Service (Istio's `PassthroughCluster`): the service is the
    /// host the request named.
    pub fn passthrough(host: &str) -> ServiceLabels {
        ServiceLabels::new(host, "PassthroughCluster", UNKNOWN)
    }

    pub fn unknown() -> ServiceLabels {
        ServiceLabels::new(UNKNOWN, UNKNOWN, UNKNOWN)
    }
}

impl PartialEq for ServiceLabels {
    fn eq(&self, o: &ServiceLabels) -> bool {
        self.hash == o.hash
            && self.service == o.service
            && self.name == o.name
            && self.namespace == o.namespace
    }
}
impl Eq for ServiceLabels {}
impl Hash for ServiceLabels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// The principals of one mTLS connection (`source_principal`, `destination_principal`:
/// full SPIFFE ids, as Istio's labels), escaped, with their hash computed once: made
/// when the connection is (inbound: accepted over mTLS; outbound: dialled with mTLS),
/// shared by every request on it. A request over plaintext has none.
#[derive(Debug)]
pub struct Principals {
    hash: u64,
    pub source: String,
    pub destination: String,
    /// The other side's SPIFFE id as verified, unescaped (for the access log): the
    /// client inbound, the server outbound.
    pub peer: Arc<str>,
}

impl Principals {
    /// Inbound over mTLS: the client is `peer`, we are `own`.
    pub fn inbound(peer: Arc<str>, own: &str) -> Principals {
        Principals::new(&peer, own, peer.clone())
    }

    /// Outbound over mTLS: we are `own`, the server is `peer`.
    pub fn outbound(own: &str, peer: Arc<str>) -> Principals {
        Principals::new(own, &peer, peer.clone())
    }

    fn new(source: &str, destination: &str, peer: Arc<str>) -> Principals {
        let (source, destination) = (label(source), label(destination));
        Principals {
            hash: hash_of(&[&source, &destination]),
            source,
            destination,
            peer,
        }
    }
}

impl PartialEq for Principals {
    fn eq(&self, o: &Principals) -> bool {
        self.hash == o.hash && self.source == o.source && self.destination == o.destination
    }
}
impl Eq for Principals {}
impl Hash for Principals {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// What one finished request reports.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub direction: Direction,
    /// The other side: the destination workload outbound, the source inbound.
    pub peer: Arc<PeerLabels>,
    pub service: Arc<ServiceLabels>,
    /// The connection's principals when it was mTLS (`None`: plaintext).
    pub mtls: Option<Arc<Principals>>,
    pub grpc: bool,
    /// 0 when no response was sent.
    pub code: u16,
    pub grpc_status: Option<u32>,
    pub flags: Flags,
    pub duration: Duration,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SeriesKey {
    direction: Direction,
    peer: Arc<PeerLabels>,
    service: Arc<ServiceLabels>,
    mtls: Option<Arc<Principals>>,
    grpc: bool,
    code: u16,
    grpc_status: Option<u32>,
    flags: Flags,
}

/// A value histogram with [`BUCKETS`]; values are recorded in `1/scale` units of the
/// bounds (microseconds for milliseconds), so the sum stays an integer atomic.
#[derive(Debug)]
struct Hist {
    buckets: [AtomicU64; 19],
    count: AtomicU64,
    sum: AtomicU64,
}

impl Hist {
    fn new() -> Hist {
        Hist {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    fn observe(&self, v: u64, scale: f64) {
        let x = v as f64 / scale;
        for (b, c) in BUCKETS.iter().zip(&self.buckets) {
            if x <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    fn write(&self, out: &mut String, name: &str, labels: &str, scale: f64) {
        use std::fmt::Write;
        for (b, c) in BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"{b}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum.load(Ordering::Relaxed) as f64 / scale;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

#[derive(Debug)]
struct Series {
    requests: AtomicU64,
    duration: Hist,
    request_bytes: Hist,
    response_bytes: Hist,
}

/// Durations are kept in microseconds, rendered in milliseconds.
const DURATION_SCALE: f64 = 1000.0;

/// The HTTP request metrics of the whole proxy.
#[derive(Debug)]
pub struct HttpMetrics {
    own: Arc<PeerLabels>,
    unknown_peer: Arc<PeerLabels>,
    unknown_service: Arc<ServiceLabels>,
    series: Mutex<HashMap<SeriesKey, Arc<Series>>>,
    dropped: AtomicU64,
}

impl HttpMetrics {
    pub fn new(identity: &Identity) -> HttpMetrics {
        HttpMetrics {
            own: Arc::new(PeerLabels::of_identity(identity)),
            unknown_peer: Arc::new(PeerLabels::unknown()),
            unknown_service: Arc::new(ServiceLabels::unknown()),
            series: Mutex::new(HashMap::new()),
            dropped: AtomicU64::new(0),
        }
    }

    /// The label set of a peer nobody knows.
    pub fn unknown_peer(&self) -> Arc<PeerLabels> {
        self.unknown_peer.clone()
    }

    pub fn unknown_service(&self) -> Arc<ServiceLabels> {
        self.unknown_service.clone()
    }

    /// Counts one request.
    pub fn record(&self, r: &RequestRecord) {
        let key = SeriesKey {
            direction: r.direction,
            peer: r.peer.clone(),
            service: r.service.clone(),
            mtls: r.mtls.clone(),
            grpc: r.grpc,
            code: r.code,
            grpc_status: r.grpc_status,
            flags: r.flags,
        };
        let series = {
            let mut map = self.series.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&key) {
                Some(s) => s.clone(),
                None if map.len() >= MAX_SERIES => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                None => {
                    let s = Arc::new(Series {
                        requests: AtomicU64::new(0),
                        duration: Hist::new(),
                        request_bytes: Hist::new(),
                        response_bytes: Hist::new(),
                    });
                    map.insert(key, s.clone());
                    s
                }
            }
        };
        series.requests.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(r.duration.as_micros()).unwrap_or(u64::MAX);
        series.duration.observe(micros, DURATION_SCALE);
        series.request_bytes.observe(r.request_bytes, 1.0);
        series.response_bytes.observe(r.response_bytes, 1.0);
    }

    /// How many label sets exist.
    pub fn series_count(&self) -> usize {
        self.series.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn labels(&self, k: &SeriesKey) -> String {
        use std::fmt::Write;
        let (src, dst) = match k.direction {
            Direction::Outbound => (&self.own, &k.peer),
            Direction::Inbound => (&k.peer, &self.own),
        };
        let (src_principal, dst_principal) = match &k.mtls {
            Some(p) => (Some(p.source.as_str()), Some(p.destination.as_str())),
            None => (None, None),
        };
        let mut out = String::with_capacity(900);
        let _ = write!(out, "reporter=\"{}\",", k.direction.reporter());
        src.write_head(&mut out, "source", src_principal);
        out.push(',');
        src.write_canonical(&mut out, "source");
        out.push(',');
        dst.write_head(&mut out, "destination", dst_principal);
        let _ = write!(
            out,
            ",destination_service=\"{}\",destination_service_name=\"{}\",destination_service_namespace=\"{}\",",
            k.service.service, k.service.name, k.service.namespace
        );
        dst.write_canonical(&mut out, "destination");
        // A destination reporter knows whether the connection was mTLS; a source
        // reporter says "unknown" either way (as Istio's and the TCP series do).
        let security = match (k.direction, &k.mtls) {
            (Direction::Outbound, _) => UNKNOWN,
            (Direction::Inbound, Some(_)) => "mutual_tls",
            (Direction::Inbound, None) => "none",
        };
        let grpc_status = k.grpc_status.map(|s| s.to_string()).unwrap_or_default();
        let _ = write!(
            out,
            ",request_protocol=\"{}\",response_code=\"{}\",grpc_response_status=\"{grpc_status}\",response_flags=\"{}\",connection_security_policy=\"{security}\"",
            if k.grpc { "grpc" } else { "http" },
            k.code,
            k.flags,
        );
        out
    }

    /// Appends the four Istio families (and the dropped-series counter) to `out`, in
    /// Prometheus text format 0.0.4.
    pub fn render(&self, out: &mut String) {
        let mut series: Vec<(String, Arc<Series>)> = {
            let map = self.series.lock().unwrap_or_else(|p| p.into_inner());
            map.iter()
                .map(|(k, v)| (self.labels(k), v.clone()))
                .collect()
        };
        series.sort_by(|a, b| a.0.cmp(&b.0));
        let name = "istio_requests_total";
        prom::header(out, name, "Requests handled.", Kind::Counter);
        for (labels, s) in &series {
            prom::sample(out, name, labels, s.requests.load(Ordering::Relaxed));
        }
        type Pick = fn(&Series) -> &Hist;
        let hists: [(&str, &str, Pick, f64); 3] = [
            (
                "istio_request_duration_milliseconds",
                "Request duration, first request byte to last response byte.",
                |s| &s.duration,
                DURATION_SCALE,
            ),
            (
                "istio_request_bytes",
                "Request body sizes.",
                |s| &s.request_bytes,
                1.0,
            ),
            (
                "istio_response_bytes",
                "Response body sizes.",
                |s| &s.response_bytes,
                1.0,
            ),
        ];
        for (name, help, pick, scale) in hists {
            prom::header(out, name, help, Kind::Histogram);
            for (labels, s) in &series {
                pick(s).write(out, name, labels, scale);
            }
        }
        let name = "mesh_proxy_http_series_dropped_total";
        prom::header(
            out,
            name,
            "Requests not counted in the Istio series: too many label sets.",
            Kind::Counter,
        );
        prom::sample(out, name, "", self.dropped.load(Ordering::Relaxed));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn meta(workload: &str, version: &str) -> PeerMeta {
        PeerMeta {
            workload: workload.into(),
            namespace: "shop".into(),
            canonical_service: "reviews".into(),
            canonical_revision: version.into(),
            app: "reviews".into(),
            version: version.into(),
            service_account: "reviews".into(),
            sidecar: true,
        }
    }

    fn record(peer: &Arc<PeerLabels>, code: u16, flags: Flags) -> RequestRecord {
        RequestRecord {
            direction: Direction::Outbound,
            peer: peer.clone(),
            service: Arc::new(ServiceLabels::new(
                "reviews.shop.svc.cluster.local",
                "reviews",
                "shop",
            )),
            mtls: None,
            grpc: false,
            code,
            grpc_status: None,
            flags,
            duration: Duration::from_micros(7500),
            request_bytes: 0,
            response_bytes: 120,
        }
    }

    #[test]
    fn flags_render_in_envoy_order() {
        assert_eq!(Flags::NONE.to_string(), "-");
        assert_eq!((Flags::URX | Flags::UF).to_string(), "UF,URX");
        assert_eq!((Flags::FI | Flags::DI).to_string(), "DI,FI");
    }

    #[test]
    fn renders_istio_labels_in_order_and_counts() {
        let m = HttpMetrics::new(&Identity {
            workload: "productpage-v1".into(),
            namespace: "shop".into(),
            app: Some("productpage".into()),
            version: Some("v1".into()),
            ..Identity::unknown()
        });
        let v1 = Arc::new(PeerLabels::of_meta(&meta("reviews-v1", "v1")));
        // A second, equal label set made elsewhere (a config update) is the same series.
        let v1_again = Arc::new(PeerLabels::of_meta(&meta("reviews-v1", "v1")));
        let v2 = Arc::new(PeerLabels::of_meta(&meta("reviews-v2", "v2")));
        m.record(&record(&v1, 200, Flags::NONE));
        m.record(&record(&v1_again, 200, Flags::NONE));
        m.record(&record(&v2, 503, Flags::UF | Flags::URX));
        assert_eq!(m.series_count(), 2);
        let mut text = String::new();
        m.render(&mut text);
        let want = "istio_requests_total{reporter=\"source\",source_workload=\"productpage-v1\",source_workload_namespace=\"shop\",source_principal=\"unknown\",source_app=\"productpage\",source_version=\"v1\",source_canonical_service=\"unknown\",source_canonical_revision=\"unknown\",destination_workload=\"reviews-v1\",destination_workload_namespace=\"shop\",destination_principal=\"unknown\",destination_app=\"reviews\",destination_version=\"v1\",destination_service=\"reviews.shop.svc.cluster.local\",destination_service_name=\"reviews\",destination_service_namespace=\"shop\",destination_canonical_service=\"reviews\",destination_canonical_revision=\"v1\",request_protocol=\"http\",response_code=\"200\",grpc_response_status=\"\",response_flags=\"-\",connection_security_policy=\"unknown\"} 2\n";
        assert!(text.contains(want), "{text}");
        assert!(
            text.contains(
                "response_code=\"503\",grpc_response_status=\"\",response_flags=\"UF,URX\""
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE istio_request_duration_milliseconds histogram"));
        // 7.5 ms: not in the 5 ms bucket, in the 10 ms one; the sum is in ms.
        let dur = |suffix: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("istio_request_duration_milliseconds")
                        && l.contains("reviews-v1")
                        && l.contains(suffix)
                })
                .unwrap()
                .to_owned()
        };
        assert!(dur("le=\"5\"}").ends_with(" 0"));
        assert!(dur("le=\"10\"}").ends_with(" 2"));
        assert!(dur("_sum{").ends_with(" 15"), "{}", dur("_sum{"));
        let resp = text
            .lines()
            .find(|l| {
                l.starts_with("istio_response_bytes_bucket")
                    && l.contains("reviews-v1")
                    && l.contains("le=\"250\"")
            })
            .unwrap();
        assert!(resp.ends_with(" 2"), "{resp}");
        assert!(text.contains("mesh_proxy_http_series_dropped_total 0"));
    }

    #[test]
    fn inbound_reports_destination_with_our_identity() {
        let m = HttpMetrics::new(&Identity {
            workload: "reviews-v1".into(),
            namespace: "shop".into(),
            ..Identity::unknown()
        });
        let mut r = record(&m.unknown_peer(), 200, Flags::NONE);
        r.direction = Direction::Inbound;
        r.grpc = true;
        r.grpc_status = Some(0);
        m.record(&r);
        let mut text = String::new();
        m.render(&mut text);
        let l = text
            .lines()
            .find(|l| l.starts_with("istio_requests_total{"))
            .unwrap();
        assert!(l.contains("reporter=\"destination\""), "{l}");
        assert!(l.contains("source_workload=\"unknown\""), "{l}");
        assert!(l.contains("destination_workload=\"reviews-v1\""), "{l}");
        assert!(l.contains("request_protocol=\"grpc\""), "{l}");
        assert!(l.contains("grpc_response_status=\"0\""), "{l}");
        assert!(l.contains("connection_security_policy=\"none\""), "{l}");
    }

    #[test]
    fn mtls_connections_carry_principals_and_the_destination_says_mutual_tls() {
        let m = HttpMetrics::new(&Identity {
            workload: "reviews-v1".into(),
            namespace: "shop".into(),
            ..Identity::unknown()
        });
        let client: Arc<str> = Arc::from("spiffe://cluster.local/ns/foo/sa/sleep");
        let own = "spiffe://cluster.local/ns/shop/sa/reviews";
        let mut r = record(&m.unknown_peer(), 200, Flags::NONE);
        r.direction = Direction::Inbound;
        r.mtls = Some(Arc::new(Principals::inbound(client.clone(), own)));
        m.record(&r);
        // The same principals made for another connection: the same series.
        r.mtls = Some(Arc::new(Principals::inbound(client.clone(), own)));
        m.record(&r);
        r.mtls = None;
        m.record(&r);
        // Outbound over mTLS: ours is the source; the policy stays unknown.
        let mut o = record(&m.unknown_peer(), 200, Flags::NONE);
        o.mtls = Some(Arc::new(Principals::outbound(own, client.clone())));
        m.record(&o);
        assert_eq!(m.series_count(), 3);
        let mut text = String::new();
        m.render(&mut text);
        let line = |want: &[&str]| {
            text.lines()
                .find(|l| {
                    l.starts_with("istio_requests_total{") && want.iter().all(|w| l.contains(w))
                })
                .unwrap_or_else(|| panic!("no series with {want:?} in {text}"))
                .to_owned()
        };
        let l = line(&["reporter=\"destination\"", "mutual_tls"]);
        assert!(
            l.contains("source_principal=\"spiffe://cluster.local/ns/foo/sa/sleep\""),
            "{l}"
        );
        assert!(
            l.contains("destination_principal=\"spiffe://cluster.local/ns/shop/sa/reviews\""),
            "{l}"
        );
        assert!(l.ends_with(" 2"), "{l}");
        let l = line(&[
            "reporter=\"destination\"",
            "connection_security_policy=\"none\"",
        ]);
        assert!(l.contains("source_principal=\"unknown\""), "{l}");
        assert!(l.contains("destination_principal=\"unknown\""), "{l}");
        let l = line(&["reporter=\"source\""]);
        assert!(
            l.contains("source_principal=\"spiffe://cluster.local/ns/shop/sa/reviews\""),
            "{l}"
        );
        assert!(
            l.contains("destination_principal=\"spiffe://cluster.local/ns/foo/sa/sleep\""),
            "{l}"
        );
        assert!(l.contains("connection_security_policy=\"unknown\""), "{l}");
    }

    #[test]
    fn series_are_bounded() {
        let m = HttpMetrics::new(&Identity::unknown());
        let peer = m.unknown_peer();
        for code in 0..(MAX_SERIES as u16 + 5) {
            m.record(&record(&peer, code, Flags::NONE));
        }
        assert_eq!(m.series_count(), MAX_SERIES);
        let mut text = String::new();
        m.render(&mut text);
        assert!(text.contains("mesh_proxy_http_series_dropped_total 5"));
    }
}
