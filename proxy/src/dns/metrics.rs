//! What the DNS proxy counts, rendered on the metrics endpoint as
//! `mesh_proxy_dns_queries_total{outcome=...}`.

use std::sync::atomic::{AtomicU64, Ordering};

use mesh_common::prom::{self, Kind};

/// Counters of the DNS proxy (shared by its tasks; relaxed atomics).
#[derive(Debug, Default)]
pub struct DnsMetrics {
    /// Queries the proxy answered itself: mesh names, with records or NODATA.
    answered: AtomicU64,
    /// Queries forwarded whose upstream answer was relayed.
    forwarded: AtomicU64,
    /// Queries answered SERVFAIL: no upstream answered, or the mesh lookup timed out.
    failed: AtomicU64,
    /// Queries answered FORMERR.
    malformed: AtomicU64,
    /// Messages not answered (responses, shorter than a header, over the in-flight
    /// limit) and TCP connections closed over the connection limit.
    dropped: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsCounts {
    pub answered: u64,
    pub forwarded: u64,
    pub failed: u64,
    pub malformed: u64,
    pub dropped: u64,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    Answered,
    Forwarded,
    Failed,
    Malformed,
    Dropped,
}

impl DnsMetrics {
    pub(crate) fn count(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Answered => &self.answered,
            Outcome::Forwarded => &self.forwarded,
            Outcome::Failed => &self.failed,
            Outcome::Malformed => &self.malformed,
            Outcome::Dropped => &self.dropped,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `mesh_proxy_dns_queries_total` by `outcome`: `answered` (a mesh name, by the
    /// proxy), `forwarded` (an upstream's answer relayed), `servfail` (no upstream
    /// answered, or the mesh lookup timed out), `formerr`, `dropped`.
    pub fn render(&self, out: &mut String) {
        let c = self.snapshot();
        let name = "mesh_proxy_dns_queries_total";
        prom::header(
            out,
            name,
            "DNS queries the proxy took from the app (--dns-capture), by how each ended.",
            Kind::Counter,
        );
        for (outcome, n) in [
            ("answered", c.answered),
            ("forwarded", c.forwarded),
            ("servfail", c.failed),
            ("formerr", c.malformed),
            ("dropped", c.dropped),
        ] {
            prom::sample(out, name, &format!("outcome=\"{outcome}\""), n);
        }
    }

    pub fn snapshot(&self) -> DnsCounts {
        DnsCounts {
            answered: self.answered.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_each_outcome() {
        let m = DnsMetrics::default();
        m.count(Outcome::Answered);
        m.count(Outcome::Answered);
        m.count(Outcome::Failed);
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains("# TYPE mesh_proxy_dns_queries_total counter\n"),
            "{out}"
        );
        assert!(
            out.contains("\nmesh_proxy_dns_queries_total{outcome=\"answered\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("\nmesh_proxy_dns_queries_total{outcome=\"servfail\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("\nmesh_proxy_dns_queries_total{outcome=\"forwarded\"} 0\n"),
            "{out}"
        );
    }
}
