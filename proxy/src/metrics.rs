//! The proxy's metrics: one struct made at startup, rendered as Prometheus text.
//!
//! Istio's standard TCP series keep Istio's names and labels, so existing dashboards
//! work; labels we cannot fill without a control plane say `unknown`, as Istio does.
//! Every label comes from a small fixed set (direction, error kind, reason) or from the
//! destination port; never from addresses.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cli::{Identity, UNKNOWN};

/// Which listener a connection arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Outbound,
    Inbound,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Outbound, Direction::Inbound];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }

    /// Istio's `reporter`: the client's sidecar reports as `source`, the server's as
    /// `destination`.
    pub fn reporter(self) -> &'static str {
        match self {
            Direction::Outbound => "source",
            Direction::Inbound => "destination",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 3] = [
        RefusalReason::Loop,
        RefusalReason::Limit,
        RefusalReason::NoOriginalDst,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Loop => "loop",
            RefusalReason::Limit => "limit",
            RefusalReason::NoOriginalDst => "no_original_dst",
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
}

impl ResponseFlags {
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFlags::None => "-",
            ResponseFlags::UpstreamFailure => "UF",
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct SeriesKey {
    direction: Direction,
    port: u16,
    flags: ResponseFlags,
}

/// Connect-latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

/// All of the proxy's metrics.
#[derive(Debug)]
pub struct Metrics {
    identity: Identity,
    series: Mutex<HashMap<SeriesKey, Arc<TcpSeries>>>,
    active: [AtomicU64; 2],
    connect_errors: [[AtomicU64; 6]; 2],
    refused: [[AtomicU64; 3]; 2],
    accept_errors: [AtomicU64; 2],
    connect_latency: [Histogram; 2],
}

impl Metrics {
    pub fn new(identity: Identity) -> Metrics {
        Metrics {
            identity,
            series: Mutex::new(HashMap::new()),
            active: Default::default(),
            connect_errors: Default::default(),
            refused: Default::default(),
            accept_errors: Default::default(),
            connect_latency: Default::default(),
        }
    }

    /// The series a connection's counters go to; looked up once per connection.
    pub fn tcp_series(
        &self,
        direction: Direction,
        port: u16,
        flags: ResponseFlags,
    ) -> Arc<TcpSeries> {
        let key = SeriesKey {
            direction,
            port,
            flags,
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
            map.iter().map(|(k, v)| (*k, v.clone())).collect()
        };
        series.sort_by_key(|(k, _)| (k.direction as u8, k.port, k.flags as u8));

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
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (key, s) in &series {
                let _ = writeln!(
                    out,
                    "{name}{{{}}} {}",
                    self.istio_labels(key),
                    pick(s).load(Ordering::Relaxed)
                );
            }
        }

        let _ = writeln!(
            out,
            "# HELP mesh_proxy_active_connections Connections open now.\n# TYPE mesh_proxy_active_connections gauge"
        );
        for d in Direction::ALL {
            let _ = writeln!(
                out,
                "mesh_proxy_active_connections{{direction=\"{d}\"}} {}",
                self.active(d)
            );
        }
        let _ = writeln!(
            out,
            "# HELP mesh_proxy_connect_errors_total Upstream connects that failed, by kind.\n# TYPE mesh_proxy_connect_errors_total counter"
        );
        for d in Direction::ALL {
            for k in ConnectErrorKind::ALL {
                let _ = writeln!(
                    out,
                    "mesh_proxy_connect_errors_total{{direction=\"{d}\",kind=\"{}\"}} {}",
                    k.as_str(),
                    self.connect_errors(d, k)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP mesh_proxy_refused_connections_total Accepted connections refused before connecting upstream.\n# TYPE mesh_proxy_refused_connections_total counter"
        );
        for d in Direction::ALL {
            for r in RefusalReason::ALL {
                let _ = writeln!(
                    out,
                    "mesh_proxy_refused_connections_total{{direction=\"{d}\",reason=\"{}\"}} {}",
                    r.as_str(),
                    self.refusals(d, r)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP mesh_proxy_accept_errors_total accept(2) failures.\n# TYPE mesh_proxy_accept_errors_total counter\nmesh_proxy_accept_errors_total{{kind=\"fd_exhausted\"}} {}\nmesh_proxy_accept_errors_total{{kind=\"other\"}} {}",
            self.accept_errors(AcceptErrorKind::FdExhausted),
            self.accept_errors(AcceptErrorKind::Other)
        );
        let name = "mesh_proxy_upstream_connect_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time to connect upstream.\n# TYPE {name} histogram"
        );
        for d in Direction::ALL {
            let h = &self.connect_latency[d.index()];
            for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&h.buckets) {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{direction=\"{d}\",le=\"{bound}\"}} {}",
                    bucket.load(Ordering::Relaxed)
                );
            }
            let count = h.count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{direction=\"{d}\",le=\"+Inf\"}} {count}\n{name}_sum{{direction=\"{d}\"}} {}\n{name}_count{{direction=\"{d}\"}} {count}",
                h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
            );
        }
        out
    }

    fn istio_labels(&self, key: &SeriesKey) -> String {
        let me_workload = escape(&self.identity.workload);
        let me_namespace = escape(&self.identity.namespace);
        let (src_wl, src_ns, dst_wl, dst_ns) = match key.direction {
            Direction::Outbound => (
                me_workload.as_str(),
                me_namespace.as_str(),
                UNKNOWN,
                UNKNOWN,
            ),
            Direction::Inbound => (
                UNKNOWN,
                UNKNOWN,
                me_workload.as_str(),
                me_namespace.as_str(),
            ),
        };
        // Without mTLS a destination reporter knows the policy is "none"; a source
        // reporter cannot tell.
        let security = match key.direction {
            Direction::Outbound => UNKNOWN,
            Direction::Inbound => "none",
        };
        format!(
            "reporter=\"{}\",direction=\"{}\",source_workload=\"{src_wl}\",source_workload_namespace=\"{src_ns}\",source_principal=\"{UNKNOWN}\",source_app=\"{UNKNOWN}\",source_version=\"{UNKNOWN}\",destination_workload=\"{dst_wl}\",destination_workload_namespace=\"{dst_ns}\",destination_principal=\"{UNKNOWN}\",destination_app=\"{UNKNOWN}\",destination_version=\"{UNKNOWN}\",destination_service=\"{UNKNOWN}\",destination_service_name=\"{UNKNOWN}\",destination_service_namespace=\"{UNKNOWN}\",destination_port=\"{}\",request_protocol=\"tcp\",response_flags=\"{}\",connection_security_policy=\"{security}\"",
            key.direction.reporter(),
            key.direction,
            key.port,
            key.flags.as_str(),
        )
    }
}

/// Escapes a Prometheus label value.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str, contains: &[&str]) -> Option<&'a str> {
        text.lines()
            .find(|l| l.starts_with(prefix) && contains.iter().all(|c| l.contains(c)))
    }

    #[test]
    fn istio_series_carry_istio_labels() {
        let m = Metrics::new(Identity {
            workload: "web".into(),
            namespace: "shop".into(),
        });
        let s = m.tcp_series(Direction::Outbound, 80, ResponseFlags::None);
        s.opened.fetch_add(2, Ordering::Relaxed);
        s.received.fetch_add(100, Ordering::Relaxed);
        s.sent.fetch_add(7, Ordering::Relaxed);
        let i = m.tcp_series(Direction::Inbound, 8080, ResponseFlags::UpstreamFailure);
        i.opened.fetch_add(1, Ordering::Relaxed);
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
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let m = Metrics::new(Identity {
            workload: "we\"ird".into(),
            namespace: "ns".into(),
        });
        m.tcp_series(Direction::Outbound, 1, ResponseFlags::None);
        assert!(m.render().contains("source_workload=\"we\\\"ird\""));
    }
}
