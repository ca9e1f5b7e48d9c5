//! The proxy's metrics: one struct made at startup, rendered as Prometheus text.
//!
//! Istio's standard TCP series keep Istio's names and labels, so existing dashboards
//! work; labels we cannot fill without a control plane say `unknown`, as Istio does.
//! Every label comes from a small fixed set (direction, error kind, reason) or from the
//! destination port; never from addresses.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_common::prom::{self, Histogram, Kind, Unit};

use crate::config::{Identity, UNKNOWN};
use crate::direction::Direction;
use crate::http::metrics::{PeerLabels, ServiceLabels};

/// Why connecting upstream failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectErrorKind {
    Refused,
    Timeout,
    Unreachable,
    Reset,
    /// Binding the inbound passthrough source address failed.
    Bind,
    Other,
}

impl ConnectErrorKind {
    pub const ALL: [ConnectErrorKind; 6] = [
        ConnectErrorKind::Refused,
        ConnectErrorKind::Timeout,
        ConnectErrorKind::Unreachable,
        ConnectErrorKind::Reset,
        ConnectErrorKind::Bind,
        ConnectErrorKind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectErrorKind::Refused => "refused",
            ConnectErrorKind::Timeout => "timeout",
            ConnectErrorKind::Unreachable => "unreachable",
            ConnectErrorKind::Reset => "reset",
            ConnectErrorKind::Bind => "bind",
            ConnectErrorKind::Other => "other",
        }
    }
}

/// Why an accepted connection was turned away before any upstream connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    /// Its original destination is one of the proxy's own listeners.
    Loop,
    /// `--max-connections` was reached.
    Limit,
    /// The kernel had no original destination for it.
    NoOriginalDst,
    /// An AuthorizationPolicy denied it (inbound TCP).
    Denied,
    /// Plaintext where PeerAuthentication says `STRICT`.
    PlaintextRefused,
    /// The mTLS handshake failed (no or a bad client certificate, a timeout).
    TlsHandshake,
    /// A gateway has no server for it: no Gateway server on the port, none for its
    /// SNI, or no route or endpoint for a TLS passthrough.
    NoServer,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 7] = [
        RefusalReason::Loop,
        RefusalReason::Limit,
        RefusalReason::NoOriginalDst,
        RefusalReason::Denied,
        RefusalReason::PlaintextRefused,
        RefusalReason::TlsHandshake,
        RefusalReason::NoServer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Loop => "loop",
            RefusalReason::Limit => "limit",
            RefusalReason::NoOriginalDst => "no_original_dst",
            RefusalReason::Denied => "denied",
            RefusalReason::PlaintextRefused => "plaintext_refused",
            RefusalReason::TlsHandshake => "tls_handshake",
            RefusalReason::NoServer => "no_server",
        }
    }

    /// The flags a refused connection's access-log line carries (Envoy's meanings: no
    /// route for it; the proxy shed it for its own load).
    pub fn flags(self) -> ResponseFlags {
        match self {
            RefusalReason::Loop | RefusalReason::NoOriginalDst | RefusalReason::NoServer => {
                ResponseFlags::NoRoute
            }
            RefusalReason::Limit => ResponseFlags::Overload,
            // Envoy's RBAC filter sets no flag either; nor does a failed handshake.
            RefusalReason::Denied
            | RefusalReason::PlaintextRefused
            | RefusalReason::TlsHandshake => ResponseFlags::None,
        }
    }
}

/// Why `accept(2)` failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptErrorKind {
    /// EMFILE / ENFILE: out of file descriptors.
    FdExhausted,
    Other,
}

/// Envoy's response flags, as Istio reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResponseFlags {
    /// Nothing to report (`-`).
    None,
    /// Upstream connection failure (`UF`).
    UpstreamFailure,
    /// No route for the connection (`NR`): its original destination is missing or is
    /// the proxy itself. Refused connections open no Istio series, so this flag is seen
    /// in the access log only.
    NoRoute,
    /// Shed by the proxy for its own load (`OM`, Envoy's overload manager):
    /// `--max-connections` reached. Access log only, as for `NR`.
    Overload,
    /// Refused by the destination cluster's `tcp.maxConnections` (`UO`).
    UpstreamOverflow,
}

impl ResponseFlags {
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFlags::None => "-",
            ResponseFlags::UpstreamFailure => "UF",
            ResponseFlags::NoRoute => "NR",
            ResponseFlags::Overload => "OM",
            ResponseFlags::UpstreamOverflow => "UO",
        }
    }
}

/// The counters of one Istio TCP series.
#[derive(Debug, Default)]
pub struct TcpSeries {
    pub opened: AtomicU64,
    pub closed: AtomicU64,
    /// Bytes from the upstream back to the client (Istio: "sent during response").
    pub sent: AtomicU64,
    /// Bytes from the client to the upstream (Istio: "received during request").
    pub received: AtomicU64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SeriesKey {
    direction: Direction,
    port: u16,
    flags: ResponseFlags,
    peer: Option<Arc<TcpPeer>>,
}

/// What mesh-control says about a TCP connection's other side and its Service. The
/// labels are the HTTP engine's, escaped once when the config is compiled and shared by
/// every connection to the endpoint; their hash is computed once, so a connection finds
/// its series without hashing or comparing label text, and the text is written only
/// when `/metrics` is read.
#[derive(Debug, Clone)]
pub struct TcpPeer {
    hash: u64,
    /// The other side's workload (`source_*` inbound, `destination_*` outbound).
    peer: Arc<PeerLabels>,
    /// `destination_service`, `destination_service_name`, `destination_service_namespace`.
    service: Arc<ServiceLabels>,
    /// Over mTLS: the other side's principal (`unknown` when its certificate named
    /// none) and this proxy's own, escaped.
    mtls: Option<(String, String)>,
}

impl TcpPeer {
    pub fn new(peer: Arc<PeerLabels>, service: Arc<ServiceLabels>) -> TcpPeer {
        TcpPeer::with(peer, service, None)
    }

    fn with(
        peer: Arc<PeerLabels>,
        service: Arc<ServiceLabels>,
        mtls: Option<(String, String)>,
    ) -> TcpPeer {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&peer, &service, &mtls).hash(&mut h);
        TcpPeer {
            hash: h.finish(),
            peer,
            service,
            mtls,
        }
    }

    /// The peer from what mesh-control said about it: `peer` is the other side's pod
    /// (if known), `service` the destination Service's host, name and namespace (if
    /// known).
    pub fn of_meta(
        peer: Option<&mesh_config::PeerMeta>,
        service: Option<(&str, &str, &str)>,
    ) -> TcpPeer {
        TcpPeer::new(
            Arc::new(peer.map_or_else(PeerLabels::unknown, PeerLabels::of_meta)),
            Arc::new(
                service.map_or_else(ServiceLabels::unknown, |(host, name, ns)| {
                    ServiceLabels::new(host, name, ns)
                }),
            ),
        )
    }

    /// This peer, over mTLS: `peer_id` is the other side's verified SPIFFE id (when
    /// known), `own_id` this proxy's. The destination reporter then says
    /// `connection_security_policy="mutual_tls"`.
    pub fn secured(&self, peer_id: Option<&str>, own_id: &str) -> TcpPeer {
        TcpPeer::with(
            self.peer.clone(),
            self.service.clone(),
            Some((
                prom::escape_label_value(peer_id.unwrap_or(UNKNOWN)),
                prom::escape_label_value(own_id),
            )),
        )
    }

    /// The other side's labels, as `side_workload=...,...,side_canonical_revision=...`.
    fn write_side(&self, out: &mut String, side: &str) {
        let principal = self.mtls.as_ref().map(|(peer, _)| peer.as_str());
        self.peer.write_head(out, side, principal);
        out.push(',');
        self.peer.write_canonical(out, side);
    }

    /// What `/metrics` lists series in the order of.
    fn sort_key(&self) -> PeerSortKey<'_> {
        let s = &self.service;
        (
            self.peer.fields(),
            [&s.service, &s.name, &s.namespace],
            self.mtls.as_ref(),
        )
    }
}

type PeerSortKey<'a> = ([&'a str; 7], [&'a str; 3], Option<&'a (String, String)>);

impl PartialEq for TcpPeer {
    fn eq(&self, o: &TcpPeer) -> bool {
        // The labels' own `eq` compares their pointers, then their hashes, first.
        self.hash == o.hash
            && self.peer == o.peer
            && self.service == o.service
            && self.mtls == o.mtls
    }
}
impl Eq for TcpPeer {}
impl Hash for TcpPeer {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Connect-latency buckets, in seconds.
static LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

type LatencyHistogram = Histogram<14>;

/// All of the proxy's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Per direction (indexed like [`Direction::index`]), the rendered `source_*` and
    /// `destination_*` labels: this proxy's own side from its identity, the other side
    /// `unknown`. The identity never changes, so they are made once.
    peer_labels: [String; 2],
    /// This proxy's own side alone, per direction (`source_*` outbound,
    /// `destination_*` inbound), for series whose other side is known ([`TcpPeer`]).
    own_labels: [String; 2],
    /// This proxy's own labels, for series over mTLS (rendered with its principal).
    own: SideLabels,
    series: Mutex<HashMap<SeriesKey, Arc<TcpSeries>>>,
    active: [AtomicU64; 2],
    connect_errors: [[AtomicU64; 6]; 2],
    refused: [[AtomicU64; RefusalReason::ALL.len()]; 2],
    accept_errors: [AtomicU64; 2],
    connect_latency: [LatencyHistogram; 2],
}

impl Metrics {
    pub fn new(identity: Identity) -> Metrics {
        let me = SideLabels::of(&identity);
        let unknown = SideLabels::unknown();
        let peer_labels = Direction::ALL.map(|d| {
            let (src, dst) = match d {
                Direction::Outbound => (&me, &unknown),
                Direction::Inbound => (&unknown, &me),
            };
            format!(
                "{},{}",
                src.render("source", UNKNOWN),
                dst.render("destination", UNKNOWN)
            )
        });
        let own_labels = Direction::ALL.map(|d| match d {
            Direction::Outbound => me.render("source", UNKNOWN),
            Direction::Inbound => me.render("destination", UNKNOWN),
        });
        Metrics {
            peer_labels,
            own_labels,
            own: me,
            series: Mutex::new(HashMap::new()),
            active: Default::default(),
            connect_errors: Default::default(),
            refused: Default::default(),
            accept_errors: Default::default(),
            connect_latency: std::array::from_fn(|_| {
                Histogram::new(&LATENCY_BUCKETS, Unit::Seconds)
            }),
        }
    }

    /// The series a connection's counters go to; looked up once per connection.
    pub fn tcp_series(
        &self,
        direction: Direction,
        port: u16,
        flags: ResponseFlags,
    ) -> Arc<TcpSeries> {
        self.tcp_series_with(direction, port, flags, None)
    }

    /// [`Metrics::tcp_series`] for a connection whose other side or Service is known.
    pub fn tcp_series_with(
        &self,
        direction: Direction,
        port: u16,
        flags: ResponseFlags,
        peer: Option<Arc<TcpPeer>>,
    ) -> Arc<TcpSeries> {
        let key = SeriesKey {
            direction,
            port,
            flags,
            peer,
        };
        let mut map = self.series.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key).or_default().clone()
    }

    pub fn connection_started(&self, d: Direction) {
        self.active[d.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_ended(&self, d: Direction) {
        self.active[d.index()].fetch_sub(1, Ordering::Relaxed);
    }

    pub fn active(&self, d: Direction) -> u64 {
        self.active[d.index()].load(Ordering::Relaxed)
    }

    pub fn connect_error(&self, d: Direction, kind: ConnectErrorKind) {
        self.connect_errors[d.index()][kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn connect_errors(&self, d: Direction, kind: ConnectErrorKind) -> u64 {
        self.connect_errors[d.index()][kind as usize].load(Ordering::Relaxed)
    }

    pub fn refused(&self, d: Direction, reason: RefusalReason) {
        self.refused[d.index()][reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refusals(&self, d: Direction, reason: RefusalReason) -> u64 {
        self.refused[d.index()][reason as usize].load(Ordering::Relaxed)
    }

    pub fn accept_error(&self, kind: AcceptErrorKind) {
        self.accept_errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn accept_errors(&self, kind: AcceptErrorKind) -> u64 {
        self.accept_errors[kind as usize].load(Ordering::Relaxed)
    }

    pub fn connect_latency(&self, d: Direction, took: Duration) {
        self.connect_latency[d.index()].observe(took);
    }

    /// Prometheus text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut series: Vec<(SeriesKey, Arc<TcpSeries>)> = {
            let map = self.series.lock().unwrap_or_else(|p| p.into_inner());
            map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        series.sort_by(|(a, _), (b, _)| {
            let key = |k: &SeriesKey| (k.direction as u8, k.port, k.flags as u8);
            fn peer(k: &SeriesKey) -> Option<PeerSortKey<'_>> {
                k.peer.as_ref().map(|p| p.sort_key())
            }
            key(a).cmp(&key(b)).then_with(|| peer(a).cmp(&peer(b)))
        });

        type Pick = fn(&TcpSeries) -> &AtomicU64;
        let istio: [(&str, &str, Pick); 4] = [
            (
                "istio_tcp_connections_opened_total",
                "TCP connections opened.",
                |s| &s.opened,
            ),
            (
                "istio_tcp_connections_closed_total",
                "TCP connections closed.",
                |s| &s.closed,
            ),
            (
                "istio_tcp_sent_bytes_total",
                "Bytes sent to the client during response.",
                |s| &s.sent,
            ),
            (
                "istio_tcp_received_bytes_total",
                "Bytes received from the client during request.",
                |s| &s.received,
            ),
        ];
        for (name, help, pick) in istio {
            prom::header(&mut out, name, help, Kind::Counter);
            for (key, s) in &series {
                prom::sample(
                    &mut out,
                    name,
                    &self.istio_labels(key),
                    pick(s).load(Ordering::Relaxed),
                );
            }
        }

        let name = "mesh_proxy_active_connections";
        prom::header(&mut out, name, "Connections open now.", Kind::Gauge);
        for d in Direction::ALL {
            prom::sample(
                &mut out,
                name,
                &format!("direction=\"{d}\""),
                self.active(d),
            );
        }
        let name = "mesh_proxy_connect_errors_total";
        prom::header(
            &mut out,
            name,
            "Upstream connects that failed, by kind.",
            Kind::Counter,
        );
        for d in Direction::ALL {
            for k in ConnectErrorKind::ALL {
                let labels = format!("direction=\"{d}\",kind=\"{}\"", k.as_str());
                prom::sample(&mut out, name, &labels, self.connect_errors(d, k));
            }
        }
        let name = "mesh_proxy_refused_connections_total";
        prom::header(
            &mut out,
            name,
            "Accepted connections refused before connecting upstream.",
            Kind::Counter,
        );
        for d in Direction::ALL {
            for r in RefusalReason::ALL {
                let labels = format!("direction=\"{d}\",reason=\"{}\"", r.as_str());
                prom::sample(&mut out, name, &labels, self.refusals(d, r));
            }
        }
        prom::counter_family(
            &mut out,
            "mesh_proxy_accept_errors_total",
            "accept(2) failures.",
            "kind",
            [
                (
                    "fd_exhausted",
                    &self.accept_errors[AcceptErrorKind::FdExhausted as usize],
                ),
                (
                    "other",
                    &self.accept_errors[AcceptErrorKind::Other as usize],
                ),
            ],
        );
        let name = "mesh_proxy_upstream_connect_duration_seconds";
        prom::header(&mut out, name, "Time to connect upstream.", Kind::Histogram);
        for d in Direction::ALL {
            self.connect_latency[d.index()].write(&mut out, name, &format!("direction=\"{d}\""));
        }
        out
    }

    fn istio_labels(&self, key: &SeriesKey) -> String {
        // Without mTLS a destination reporter knows the policy is "none"; a source
        // reporter cannot tell.
        let security = match key.direction {
            Direction::Outbound => UNKNOWN,
            Direction::Inbound => "none",
        };
        let Some(peer) = &key.peer else {
            return format!(
                "reporter=\"{}\",direction=\"{}\",{},destination_service=\"{UNKNOWN}\",destination_service_name=\"{UNKNOWN}\",destination_service_namespace=\"{UNKNOWN}\",destination_port=\"{}\",request_protocol=\"tcp\",response_flags=\"{}\",connection_security_policy=\"{security}\"",
                key.direction.reporter(),
                key.direction,
                self.peer_labels[key.direction.index()],
                key.port,
                key.flags.as_str(),
            );
        };
        let mtls_own;
        let (own, security) = match &peer.mtls {
            None => (&self.own_labels[key.direction.index()], security),
            Some((_, principal)) => {
                let side = match key.direction {
                    Direction::Outbound => "source",
                    Direction::Inbound => "destination",
                };
                mtls_own = self.own.render(side, principal);
                let security = match key.direction {
                    Direction::Outbound => UNKNOWN,
                    Direction::Inbound => "mutual_tls",
                };
                (&mtls_own, security)
            }
        };
        use std::fmt::Write as _;
        let mut out = String::with_capacity(1024);
        let _ = write!(
            out,
            "reporter=\"{}\",direction=\"{}\",",
            key.direction.reporter(),
            key.direction
        );
        match key.direction {
            Direction::Outbound => {
                out.push_str(own);
                out.push(',');
                peer.write_side(&mut out, "destination");
            }
            Direction::Inbound => {
                peer.write_side(&mut out, "source");
                out.push(',');
                out.push_str(own);
            }
        }
        let svc = &peer.service;
        let _ = write!(
            out,
            ",destination_service=\"{}\",destination_service_name=\"{}\",destination_service_namespace=\"{}\",destination_port=\"{}\",request_protocol=\"tcp\",response_flags=\"{}\",connection_security_policy=\"{security}\"",
            svc.service,
            svc.name,
            svc.namespace,
            key.port,
            key.flags.as_str(),
        );
        out
    }
}

/// One side's workload labels (`source_*` or `destination_*`), escaped: this proxy's own
/// from what the injector told it, or `unknown` for the side it cannot know without a
/// control plane.
#[derive(Debug)]
struct SideLabels {
    workload: String,
    namespace: String,
    app: String,
    version: String,
    canonical_service: String,
    canonical_revision: String,
}

impl SideLabels {
    fn of(id: &Identity) -> SideLabels {
        let or_unknown =
            |v: &Option<String>| prom::escape_label_value(v.as_deref().unwrap_or(UNKNOWN));
        SideLabels {
            workload: prom::escape_label_value(&id.workload),
            namespace: prom::escape_label_value(&id.namespace),
            app: or_unknown(&id.app),
            version: or_unknown(&id.version),
            canonical_service: or_unknown(&id.canonical_service),
            canonical_revision: or_unknown(&id.canonical_revision),
        }
    }

    fn unknown() -> SideLabels {
        SideLabels {
            workload: UNKNOWN.to_owned(),
            namespace: UNKNOWN.to_owned(),
            app: UNKNOWN.to_owned(),
            version: UNKNOWN.to_owned(),
            canonical_service: UNKNOWN.to_owned(),
            canonical_revision: UNKNOWN.to_owned(),
        }
    }

    /// `principal` is escaped already.
    fn render(&self, side: &str, principal: &str) -> String {
        format!(
            "{side}_workload=\"{}\",{side}_workload_namespace=\"{}\",{side}_principal=\"{principal}\",{side}_app=\"{}\",{side}_version=\"{}\",{side}_canonical_service=\"{}\",{side}_canonical_revision=\"{}\"",
            self.workload,
            self.namespace,
            self.app,
            self.version,
            self.canonical_service,
            self.canonical_revision
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str, contains: &[&str]) -> Option<&'a str> {
        text.lines()
            .find(|l| l.starts_with(prefix) && contains.iter().all(|c| l.contains(c)))
    }

    /// Workload `web` in `shop`: an outbound series to port 80 (2 opened, 100 bytes in,
    /// 7 out) and an inbound UF series to 8080 (1 opened).
    fn web_with_two_series() -> Metrics {
        let m = Metrics::new(Identity {
            workload: "web".into(),
            namespace: "shop".into(),
            ..Identity::unknown()
        });
        let s = m.tcp_series(Direction::Outbound, 80, ResponseFlags::None);
        s.opened.fetch_add(2, Ordering::Relaxed);
        s.received.fetch_add(100, Ordering::Relaxed);
        s.sent.fetch_add(7, Ordering::Relaxed);
        let i = m.tcp_series(Direction::Inbound, 8080, ResponseFlags::UpstreamFailure);
        i.opened.fetch_add(1, Ordering::Relaxed);
        m
    }

    #[test]
    fn istio_series_carry_istio_labels() {
        let m = web_with_two_series();
        let text = m.render();
        let l = line(
            &text,
            "istio_tcp_connections_opened_total{",
            &["destination_port=\"80\""],
        )
        .unwrap();
        assert!(l.contains("reporter=\"source\""), "{l}");
        assert!(l.contains("source_workload=\"web\""), "{l}");
        assert!(l.contains("source_workload_namespace=\"shop\""), "{l}");
        assert!(l.contains("destination_workload=\"unknown\""), "{l}");
        assert!(l.ends_with(" 2"), "{l}");
        let l = line(&text, "istio_tcp_received_bytes_total{", &["\"80\""]).unwrap();
        assert!(l.ends_with(" 100"), "{l}");
        let l = line(&text, "istio_tcp_sent_bytes_total{", &["\"80\""]).unwrap();
        assert!(l.ends_with(" 7"), "{l}");
        let l = line(&text, "istio_tcp_connections_opened_total{", &["\"8080\""]).unwrap();
        assert!(l.contains("reporter=\"destination\""), "{l}");
        assert!(l.contains("destination_workload=\"web\""), "{l}");
        assert!(l.contains("source_workload=\"unknown\""), "{l}");
        assert!(l.contains("response_flags=\"UF\""), "{l}");
        assert!(text.contains("# TYPE istio_tcp_sent_bytes_total counter"));
    }

    #[test]
    fn same_key_same_series() {
        let m = Metrics::new(Identity::unknown());
        let a = m.tcp_series(Direction::Outbound, 1, ResponseFlags::None);
        let b = m.tcp_series(Direction::Outbound, 1, ResponseFlags::None);
        assert!(Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn a_known_peer_and_service_fill_the_other_side() {
        let m = web_with_two_series();
        let meta = mesh_config::PeerMeta {
            workload: "reviews-v2".into(),
            namespace: "shop".into(),
            canonical_service: "reviews".into(),
            canonical_revision: "v2".into(),
            app: "reviews".into(),
            version: "v2".into(),
            service_account: "reviews".into(),
            sidecar: true,
        };
        let svc = ("reviews.shop.svc.cluster.local", "reviews", "shop");
        let peer = Arc::new(TcpPeer::of_meta(Some(&meta), Some(svc)));
        let s = m.tcp_series_with(
            Direction::Outbound,
            9080,
            ResponseFlags::None,
            Some(peer.clone()),
        );
        s.opened.fetch_add(1, Ordering::Relaxed);
        // The same labels made again (another connection) are the same series.
        let again = Arc::new(TcpPeer::of_meta(Some(&meta), Some(svc)));
        assert!(Arc::ptr_eq(
            &s,
            &m.tcp_series_with(Direction::Outbound, 9080, ResponseFlags::None, Some(again))
        ));
        let src = Arc::new(TcpPeer::of_meta(Some(&meta), Some(svc)));
        m.tcp_series_with(Direction::Inbound, 9080, ResponseFlags::None, Some(src))
            .opened
            .fetch_add(3, Ordering::Relaxed);
        let text = m.render();
        let l = line(
            &text,
            "istio_tcp_connections_opened_total{",
            &["reporter=\"source\"", "\"9080\""],
        )
        .unwrap();
        for want in [
            "source_workload=\"web\"",
            "destination_workload=\"reviews-v2\"",
            "destination_version=\"v2\"",
            "destination_canonical_service=\"reviews\"",
            "destination_service=\"reviews.shop.svc.cluster.local\"",
            "destination_service_name=\"reviews\"",
            "destination_service_namespace=\"shop\"",
        ] {
            assert!(l.contains(want), "{want}: {l}");
        }
        assert!(l.ends_with(" 1"), "{l}");
        let l = line(
            &text,
            "istio_tcp_connections_opened_total{",
            &["reporter=\"destination\"", "\"9080\""],
        )
        .unwrap();
        assert!(
            l.contains("source_workload=\"reviews-v2\",source_workload_namespace=\"shop\""),
            "{l}"
        );
        assert!(l.contains("destination_workload=\"web\""), "{l}");
        assert!(l.ends_with(" 3"), "{l}");
    }

    #[test]
    fn an_mtls_series_has_every_label_in_istios_order() {
        let m = Metrics::new(Identity {
            workload: "web".into(),
            namespace: "shop".into(),
            app: Some("web".into()),
            ..Identity::unknown()
        });
        // No `app` label on the client's pod: `unknown`, as for its HTTP requests.
        let meta = mesh_config::PeerMeta {
            workload: "client".into(),
            namespace: "shop".into(),
            canonical_service: "client".into(),
            canonical_revision: "latest".into(),
            app: String::new(),
            version: String::new(),
            service_account: "client".into(),
            sidecar: true,
        };
        let plain = TcpPeer::of_meta(
            Some(&meta),
            Some(("web.shop.svc.cluster.local", "web", "shop")),
        );
        let secured = plain.secured(
            Some("spiffe://cluster.local/ns/shop/sa/client"),
            "spiffe://cluster.local/ns/shop/sa/web",
        );
        assert_ne!(plain, secured);
        let s = m.tcp_series_with(
            Direction::Inbound,
            8080,
            ResponseFlags::None,
            Some(Arc::new(secured)),
        );
        s.opened.fetch_add(1, Ordering::Relaxed);
        let text = m.render();
        let want = "istio_tcp_connections_opened_total{reporter=\"destination\",direction=\"inbound\",\
            source_workload=\"client\",source_workload_namespace=\"shop\",\
            source_principal=\"spiffe://cluster.local/ns/shop/sa/client\",source_app=\"unknown\",\
            source_version=\"unknown\",source_canonical_service=\"client\",\
            source_canonical_revision=\"latest\",destination_workload=\"web\",\
            destination_workload_namespace=\"shop\",\
            destination_principal=\"spiffe://cluster.local/ns/shop/sa/web\",destination_app=\"web\",\
            destination_version=\"unknown\",destination_canonical_service=\"unknown\",\
            destination_canonical_revision=\"unknown\",\
            destination_service=\"web.shop.svc.cluster.local\",destination_service_name=\"web\",\
            destination_service_namespace=\"shop\",destination_port=\"8080\",\
            request_protocol=\"tcp\",response_flags=\"-\",connection_security_policy=\"mutual_tls\"} 1";
        assert!(text.lines().any(|l| l == want), "{want}\nnot in:\n{text}");
    }

    #[test]
    fn operational_metrics_render() {
        let m = Metrics::new(Identity::unknown());
        m.connection_started(Direction::Inbound);
        m.connect_error(Direction::Outbound, ConnectErrorKind::Timeout);
        m.refused(Direction::Outbound, RefusalReason::Loop);
        m.accept_error(AcceptErrorKind::FdExhausted);
        m.connect_latency(Direction::Outbound, Duration::from_micros(700));
        let text = m.render();
        assert!(text.contains("mesh_proxy_active_connections{direction=\"inbound\"} 1"));
        assert!(text.contains(
            "mesh_proxy_connect_errors_total{direction=\"outbound\",kind=\"timeout\"} 1"
        ));
        assert!(text.contains(
            "mesh_proxy_refused_connections_total{direction=\"outbound\",reason=\"loop\"} 1"
        ));
        assert!(text.contains("mesh_proxy_accept_errors_total{kind=\"fd_exhausted\"} 1"));
        let h = "mesh_proxy_upstream_connect_duration_seconds";
        assert!(text.contains(&format!(
            "{h}_bucket{{direction=\"outbound\",le=\"0.0005\"}} 0"
        )));
        assert!(text.contains(&format!(
            "{h}_bucket{{direction=\"outbound\",le=\"0.001\"}} 1"
        )));
        assert!(text.contains(&format!("{h}_count{{direction=\"outbound\"}} 1")));
        assert!(text.contains(&format!("{h}_sum{{direction=\"outbound\"}} 0.0007")));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(prom::escape_label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let m = Metrics::new(Identity {
            workload: "we\"ird".into(),
            namespace: "ns".into(),
            ..Identity::unknown()
        });
        m.tcp_series(Direction::Outbound, 1, ResponseFlags::None);
        assert!(m.render().contains("source_workload=\"we\\\"ird\""));
    }

    /// What the injector says about the pod (app and version labels, canonical service
    /// and revision) labels this proxy's side of every series: source on outbound,
    /// destination on inbound; the other side stays unknown.
    #[test]
    fn app_version_and_canonical_names_label_our_side() {
        let m = Metrics::new(Identity {
            workload: "reviews-v1".into(),
            namespace: "shop".into(),
            app: Some("reviews".into()),
            version: Some("v1".into()),
            canonical_service: Some("reviews".into()),
            canonical_revision: Some("v1".into()),
            ..Identity::unknown()
        });
        m.tcp_series(Direction::Outbound, 9080, ResponseFlags::None);
        m.tcp_series(Direction::Inbound, 9080, ResponseFlags::None);
        let text = m.render();
        let ours = |side: &str| {
            [
                format!("{side}_workload=\"reviews-v1\""),
                format!("{side}_app=\"reviews\""),
                format!("{side}_version=\"v1\""),
                format!("{side}_canonical_service=\"reviews\""),
                format!("{side}_canonical_revision=\"v1\""),
            ]
        };
        let theirs = |side: &str| {
            [
                format!("{side}_app=\"unknown\""),
                format!("{side}_version=\"unknown\""),
                format!("{side}_canonical_service=\"unknown\""),
                format!("{side}_canonical_revision=\"unknown\""),
            ]
        };
        for (dir, me, other) in [
            ("outbound", "source", "destination"),
            ("inbound", "destination", "source"),
        ] {
            let l = line(
                &text,
                "istio_tcp_connections_opened_total{",
                &[&format!("direction=\"{dir}\"")],
            )
            .unwrap_or_else(|| panic!("no {dir} series in\n{text}"));
            for want in ours(me).iter().chain(&theirs(other)) {
                assert!(l.contains(want.as_str()), "{dir}: {want} missing in {l}");
            }
        }
    }

    /// The whole exposition, byte for byte (the file was first rendered by the code
    /// before it moved onto `mesh_common::prom`; since then only the canonical
    /// service/revision labels were added, app/version filled in, and the `denied`,
    /// `plaintext_refused`, `tls_handshake` and `no_server` refusal reasons added).
    #[test]
    fn rendering_is_unchanged() {
        let m = web_with_two_series();
        m.connection_started(Direction::Inbound);
        m.connect_error(Direction::Outbound, ConnectErrorKind::Timeout);
        m.refused(Direction::Outbound, RefusalReason::Loop);
        m.accept_error(AcceptErrorKind::FdExhausted);
        m.connect_latency(Direction::Outbound, Duration::from_micros(700));
        m.connect_latency(Direction::Inbound, Duration::from_millis(3));
        assert_eq!(m.render(), include_str!("../testdata/metrics_render.prom"));
    }
}
