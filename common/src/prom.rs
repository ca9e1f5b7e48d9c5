//! Prometheus text exposition (format 0.0.4), written by hand: the proxy's memory budget
//! has no room for a metrics framework, and every exporter in the mesh writes the same
//! few shapes (a family header, samples, a histogram).
//!
//! Writing into a `String` cannot fail, so these functions return nothing.

use std::fmt::{Display, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A metric family's type, as the `# TYPE` line spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// `# HELP name help` and `# TYPE name kind`.
pub fn header(out: &mut String, name: &str, help: &str, kind: Kind) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {}", kind.as_str());
}

/// One sample line. `labels` is already rendered (`a="1",b="2"`), or empty for none.
pub fn sample(out: &mut String, name: &str, labels: &str, value: impl Display) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// A counter family with one label: the header, then one sample per label value.
pub fn counter_family<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    series: impl IntoIterator<Item = (&'a str, &'a AtomicU64)>,
) {
    header(out, name, help, Kind::Counter);
    for (value, c) in series {
        let _ = writeln!(
            out,
            "{name}{{{label}=\"{value}\"}} {}",
            c.load(Ordering::Relaxed)
        );
    }
}

/// Escapes a label value: backslash, double quote and newline.
pub fn escape_label_value(v: &str) -> String {
    // Label values almost never need escaping (names, versions, SPIFFE ids): one scan,
    // one copy.
    if !v.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        return v.to_owned();
    }
    let mut out = String::with_capacity(v.len() + 2);
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

/// The unit a histogram's bucket bounds and sum are in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    Milliseconds,
}

impl Unit {
    fn of(self, d: Duration) -> f64 {
        match self {
            Unit::Seconds => d.as_secs_f64(),
            Unit::Milliseconds => d.as_secs_f64() * 1000.0,
        }
    }
}

/// A lock-free duration histogram with fixed bucket bounds (in `unit`, ascending).
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    bounds: &'static [f64; N],
    unit: Unit,
    buckets: [AtomicU64; N],
    count: AtomicU64,
    /// Sum in nanoseconds, so it can be an integer atomic.
    sum_nanos: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    pub fn new(bounds: &'static [f64; N], unit: Unit) -> Self {
        Histogram {
            bounds,
            unit,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let v = self.unit.of(d);
        // Buckets are cumulative, as the exposition format wants them.
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            if v <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// How many observations were recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The `_bucket`, `_sum` and `_count` samples of one series (no header). `labels` is
    /// already rendered, or empty; `le` is added after it.
    pub fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let nanos = self.sum_nanos.load(Ordering::Relaxed);
        let sum = match self.unit {
            Unit::Seconds => nanos as f64 / 1e9,
            Unit::Milliseconds => nanos as f64 / 1e6,
        };
        sample(out, &format!("{name}_sum"), labels, sum);
        sample(out, &format!("{name}_count"), labels, count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_header_and_samples() {
        let mut out = String::new();
        header(&mut out, "x_total", "Things.", Kind::Counter);
        sample(&mut out, "x_total", "", 3);
        sample(&mut out, "x_total", "a=\"b\"", 4);
        assert_eq!(
            out,
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total 3\nx_total{a=\"b\"} 4\n"
        );
    }

    #[test]
    fn counter_family_one_label() {
        let (a, b) = (AtomicU64::new(1), AtomicU64::new(2));
        let mut out = String::new();
        counter_family(
            &mut out,
            "r_total",
            "R.",
            "result",
            [("ok", &a), ("failed", &b)],
        );
        assert_eq!(
            out,
            "# HELP r_total R.\n# TYPE r_total counter\nr_total{result=\"ok\"} 1\nr_total{result=\"failed\"} 2\n"
        );
    }

    #[test]
    fn histogram_is_cumulative_with_sum_in_its_unit() {
        static B: [f64; 3] = [0.001, 0.01, 1.0];
        let h = Histogram::new(&B, Unit::Seconds);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(2));
        let mut out = String::new();
        h.write(&mut out, "t_seconds", "d=\"in\"");
        assert_eq!(
            out,
            "t_seconds_bucket{d=\"in\",le=\"0.001\"} 1\n\
             t_seconds_bucket{d=\"in\",le=\"0.01\"} 2\n\
             t_seconds_bucket{d=\"in\",le=\"1\"} 2\n\
             t_seconds_bucket{d=\"in\",le=\"+Inf\"} 3\n\
             t_seconds_sum{d=\"in\"} 2.0055\n\
             t_seconds_count{d=\"in\"} 3\n"
        );
        static MS: [f64; 2] = [1.0, 10.0];
        let m = Histogram::new(&MS, Unit::Milliseconds);
        m.observe(Duration::from_millis(5));
        let mut out = String::new();
        m.write(&mut out, "t_ms", "");
        assert!(out.contains("t_ms_bucket{le=\"1\"} 0\n"), "{out}");
        assert!(out.contains("t_ms_bucket{le=\"10\"} 1\n"), "{out}");
        assert!(out.contains("t_ms_sum 5\n"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape_label_value("plain"), "plain");
        assert_eq!(escape_label_value("grün"), "grün");
        assert_eq!(escape_label_value("grün\n"), "grün\\n");
        assert_eq!(escape_label_value("\""), "\\\"");
    }
}
