//! mesh-control's own Prometheus series (`/metrics` on `--metrics-addr`), written with
//! [`mesh_common::prom`].

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mesh_common::prom::{self, Histogram, Kind, Unit};

/// Push latency buckets, seconds: from a change seen by a watcher (debounce included) to
/// the response handed to the proxy's stream.
static PUSH_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub const CONNECTED_PROXIES: &str = "mesh_control_connected_proxies";
pub const PUSHES_TOTAL: &str = "mesh_control_pushes_total";
pub const PUSH_DURATION: &str = "mesh_control_push_duration_seconds";
pub const CONFIG_REJECTED_TOTAL: &str = "mesh_control_config_rejected_total";
pub const CONFIG_ERRORS_TOTAL: &str = "mesh_control_config_errors_total";
pub const SNAPSHOT_BUILDS_TOTAL: &str = "mesh_control_snapshot_builds_total";
pub const CA_ISSUED_TOTAL: &str = "mesh_control_ca_certificates_issued_total";
pub const CA_REFUSED_TOTAL: &str = "mesh_control_ca_requests_refused_total";

/// Why the CA refused a `CreateCertificate` (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaRefusal {
    /// No bearer token, or the TokenReview did not authenticate it.
    Unauthenticated,
    /// The CSR does not parse or its signature does not verify.
    BadCsr,
    /// The CSR asks for another identity, or more than one.
    Identity,
    /// The requested lifetime is above `--max-workload-cert-ttl`.
    Ttl,
    /// Signing failed on our side.
    Internal,
}

impl CaRefusal {
    pub const ALL: [CaRefusal; 5] = [
        CaRefusal::Unauthenticated,
        CaRefusal::BadCsr,
        CaRefusal::Identity,
        CaRefusal::Ttl,
        CaRefusal::Internal,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CaRefusal::Unauthenticated => "unauthenticated",
            CaRefusal::BadCsr => "bad_csr",
            CaRefusal::Identity => "identity",
            CaRefusal::Ttl => "ttl",
            CaRefusal::Internal => "internal",
        }
    }
}

/// Every series; shared by the engine, the streams and the HTTP endpoint.
#[derive(Debug)]
pub struct Metrics {
    pub connected_proxies: AtomicU64,
    pub pushes: AtomicU64,
    pub push_duration: Histogram<12>,
    pub rejected: AtomicU64,
    pub builds: AtomicU64,
    /// Workload certificates the CA issued.
    pub ca_issued: AtomicU64,
    /// CA requests refused, indexed as [`CaRefusal::ALL`].
    ca_refusals: [AtomicU64; 5],
    /// Diagnostics by object kind, each distinct one counted once.
    config_errors: Mutex<BTreeMap<String, u64>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            connected_proxies: AtomicU64::new(0),
            pushes: AtomicU64::new(0),
            push_duration: Histogram::new(&PUSH_BUCKETS, Unit::Seconds),
            rejected: AtomicU64::new(0),
            builds: AtomicU64::new(0),
            ca_issued: AtomicU64::new(0),
            ca_refusals: Default::default(),
            config_errors: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Metrics {
    pub fn config_error(&self, kind: &str) {
        let mut m = self.config_errors.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(kind.to_owned()).or_default() += 1;
    }

    pub fn ca_refused(&self, why: CaRefusal) {
        self.ca_refusals[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn push(&self, since_change: Option<Duration>) {
        self.pushes.fetch_add(1, Ordering::Relaxed);
        if let Some(d) = since_change {
            self.push_duration.observe(d);
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        prom::header(
            &mut out,
            CONNECTED_PROXIES,
            "Proxies with an open config stream.",
            Kind::Gauge,
        );
        prom::sample(&mut out, CONNECTED_PROXIES, "", g(&self.connected_proxies));
        prom::header(
            &mut out,
            PUSHES_TOTAL,
            "Config responses sent to proxies.",
            Kind::Counter,
        );
        prom::sample(&mut out, PUSHES_TOTAL, "", g(&self.pushes));
        prom::header(
            &mut out,
            PUSH_DURATION,
            "From a cluster change seen to the response written to a proxy's stream, per proxy.",
            Kind::Histogram,
        );
        self.push_duration.write(&mut out, PUSH_DURATION, "");
        prom::header(
            &mut out,
            CONFIG_REJECTED_TOTAL,
            "Responses a proxy refused (NACK).",
            Kind::Counter,
        );
        prom::sample(&mut out, CONFIG_REJECTED_TOTAL, "", g(&self.rejected));
        prom::header(
            &mut out,
            CONFIG_ERRORS_TOTAL,
            "Distinct problems found in cluster objects (each counted once), by object kind.",
            Kind::Counter,
        );
        let errors = self
            .config_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (kind, n) in &errors {
            let labels = format!("kind=\"{}\"", prom::escape_label_value(kind));
            prom::sample(&mut out, CONFIG_ERRORS_TOTAL, &labels, n);
        }
        prom::header(
            &mut out,
            SNAPSHOT_BUILDS_TOTAL,
            "Snapshots built from the watched objects.",
            Kind::Counter,
        );
        prom::sample(&mut out, SNAPSHOT_BUILDS_TOTAL, "", g(&self.builds));
        prom::header(
            &mut out,
            CA_ISSUED_TOTAL,
            "Workload certificates the CA issued (CreateCertificate answered).",
            Kind::Counter,
        );
        prom::sample(&mut out, CA_ISSUED_TOTAL, "", g(&self.ca_issued));
        prom::header(
            &mut out,
            CA_REFUSED_TOTAL,
            "CreateCertificate requests the CA refused, by reason.",
            Kind::Counter,
        );
        for why in CaRefusal::ALL {
            let labels = format!("reason=\"{}\"", why.label());
            prom::sample(
                &mut out,
                CA_REFUSED_TOTAL,
                &labels,
                g(&self.ca_refusals[why as usize]),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = Metrics::default();
        m.push(Some(Duration::from_millis(120)));
        m.push(None);
        m.config_error("VirtualService");
        m.config_error("VirtualService");
        m.ca_issued.fetch_add(3, Ordering::Relaxed);
        m.ca_refused(CaRefusal::Identity);
        let out = m.render();
        for name in [
            CONNECTED_PROXIES,
            PUSHES_TOTAL,
            PUSH_DURATION,
            CONFIG_REJECTED_TOTAL,
            CONFIG_ERRORS_TOTAL,
            SNAPSHOT_BUILDS_TOTAL,
            CA_ISSUED_TOTAL,
            CA_REFUSED_TOTAL,
        ] {
            assert!(out.contains(&format!("# TYPE {name} ")), "{name}: {out}");
        }
        assert!(out.contains("mesh_control_pushes_total 2\n"), "{out}");
        assert!(
            out.contains("mesh_control_push_duration_seconds_count 1\n"),
            "{out}"
        );
        assert!(
            out.contains("mesh_control_config_errors_total{kind=\"VirtualService\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("mesh_control_ca_certificates_issued_total 3\n"),
            "{out}"
        );
        assert!(
            out.contains("mesh_control_ca_requests_refused_total{reason=\"identity\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("mesh_control_ca_requests_refused_total{reason=\"ttl\"} 0\n"),
            "{out}"
        );
    }
}
