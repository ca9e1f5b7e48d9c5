//! `mesh-bookstore load`: C workers, each on its own kept-alive connection (made anew when
//! the server closes it), send `GET URL` back to back (or, with `--rate`, on a shared
//! schedule of R requests a second), for `--count` requests or `--duration` seconds, and
//! print one JSON line:
//!
//! ```text
//! {"sent":N,"ok":..,"errors":..,"versions":{"v1":..},"statuses":{"200":..},"by":{"v1 200":..},
//!  "pods":{"httpbin-v1-..":..},"overloaded":..,"overloaded_statuses":{"503":..},
//!  "connections":..,"p50_ms":..,"p90_ms":..,"p99_ms":..,"max_ms":..,"min_ms":..,
//!  "seconds":..,"first_error":..,"error_samples":[..],"trace":[[start_ms,ms,"v1",200,0],..]}
//! ```
//!
//! - `ok` is the number of answers (any status); `errors` the requests that got none
//!   (refused, reset, closed, timed out), with the first few distinct messages in
//!   `error_samples` (and the very first in `first_error`).
//! - `versions`, `pods`: who answered (`X-Version`, `X-Pod`; `-` when the answer had
//!   none, e.g. one the client's sidecar made itself); `by`: `"<version> <status>"`.
//! - `overloaded`: answers carrying `x-envoy-overloaded` (a sidecar's circuit breaker),
//!   `overloaded_statuses` the same by status.
//! - `connections`: TCP connections the workers made (C unless servers closed some).
//! - Latencies are of answered requests, in ms.
//! - `trace` (only with `--trace`): every request, in the order they were sent: its start
//!   (ms since the run started), its latency (ms), version, status (0: no answer) and 1
//!   when it was overloaded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::http::{Client, Target, json_str, parse_url};

/// How many distinct error messages the JSON keeps.
const ERROR_SAMPLES: usize = 5;

/// `load`'s settings.
#[derive(Debug)]
pub struct Options {
    pub target: Target,
    /// Stop after this many requests (`None` with a duration: no count limit).
    pub count: Option<u64>,
    /// Stop sending once this much time has passed (requests under way still finish).
    pub duration: Option<Duration>,
    pub concurrency: u64,
    /// Requests a second over all workers; 0: no pacing (each worker back to back).
    pub rate: f64,
    pub headers: Vec<String>,
    pub timeout: Duration,
    pub trace: bool,
}

impl Options {
    pub fn parse(url: &str, flags: Vec<(String, String)>) -> Result<Options> {
        let mut o = Options {
            target: parse_url(url)?,
            count: None,
            duration: None,
            concurrency: 1,
            rate: 0.0,
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
            trace: false,
        };
        let secs = |k: &str, v: &str| -> Result<Duration> {
            v.trim_end_matches('s')
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64)
                .with_context(|| format!("--{k} {v}: not seconds"))
        };
        for (k, v) in flags {
            match k.as_str() {
                "count" => o.count = Some(v.parse().context("--count")?),
                "duration" => o.duration = Some(secs(&k, &v)?),
                "concurrency" => o.concurrency = v.parse::<u64>().context("--concurrency")?.max(1),
                "rate" => {
                    o.rate = v
                        .parse()
                        .ok()
                        .filter(|r: &f64| r.is_finite() && *r >= 0.0)
                        .with_context(|| format!("--rate {v}: not a rate"))?
                }
                "header" => {
                    if !v.contains(':') {
                        bail!("--header {v:?}: not 'Name: value'");
                    }
                    o.headers.push(v)
                }
                "timeout" => o.timeout = secs(&k, &v)?,
                "trace" => o.trace = true,
                _ => bail!("unknown flag --{k}\n{}", crate::USAGE),
            }
        }
        if o.count.is_none() && o.duration.is_none() {
            o.count = Some(100);
        }
        Ok(o)
    }
}

/// One request's outcome, for the trace.
struct Sample {
    start_us: u64,
    latency_us: u64,
    version: String,
    /// 0: no answer.
    status: u16,
    overloaded: bool,
}

/// What one worker counted; merged at the end.
#[derive(Default)]
struct Tally {
    sent: u64,
    errors: u64,
    by: BTreeMap<String, u64>,
    versions: BTreeMap<String, u64>,
    statuses: BTreeMap<String, u64>,
    pods: BTreeMap<String, u64>,
    overloaded: BTreeMap<String, u64>,
    latencies_us: Vec<u64>,
    /// (when, message), the first distinct ones.
    errors_seen: Vec<(u64, String)>,
    connections: u64,
    trace: Vec<Sample>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        let add = |a: &mut BTreeMap<String, u64>, b: BTreeMap<String, u64>| {
            for (k, v) in b {
                *a.entry(k).or_default() += v;
            }
        };
        self.sent += o.sent;
        self.errors += o.errors;
        add(&mut self.by, o.by);
        add(&mut self.versions, o.versions);
        add(&mut self.statuses, o.statuses);
        add(&mut self.pods, o.pods);
        add(&mut self.overloaded, o.overloaded);
        self.latencies_us.extend(o.latencies_us);
        self.errors_seen.extend(o.errors_seen);
        self.connections += o.connections;
        self.trace.extend(o.trace);
    }

    fn error(&mut self, at_us: u64, msg: String) {
        self.errors += 1;
        if self.errors_seen.len() < ERROR_SAMPLES
            && !self.errors_seen.iter().any(|(_, m)| *m == msg)
        {
            self.errors_seen.push((at_us, msg));
        }
    }
}

/// Runs the load and returns its JSON line.
pub fn run(o: Options) -> String {
    let o = Arc::new(o);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..o.concurrency)
        .map(|_| {
            let (o, next) = (o.clone(), next.clone());
            std::thread::spawn(move || worker(&o, &next, started))
        })
        .collect();
    let mut t = Tally::default();
    for w in workers {
        if let Ok(w) = w.join() {
            t.merge(w);
        }
    }
    render(&mut t, started.elapsed(), o.trace)
}

fn worker(o: &Options, next: &AtomicU64, started: Instant) -> Tally {
    let mut t = Tally::default();
    let mut client = Client::default();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if o.count.is_some_and(|c| i >= c) {
            break;
        }
        if o.rate > 0.0 {
            let offset = Duration::from_secs_f64(i as f64 / o.rate);
            if o.duration.is_some_and(|d| offset >= d) {
                break;
            }
            if let Some(wait) = (started + offset).checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        } else if o.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        let t0 = Instant::now();
        let start_us = t0.duration_since(started).as_micros() as u64;
        let result = client.get(&o.target, &o.headers, o.timeout);
        let latency_us = t0.elapsed().as_micros() as u64;
        t.sent += 1;
        let sample = match result {
            Ok(r) => {
                t.latencies_us.push(latency_us);
                *t.by
                    .entry(format!("{} {}", r.version, r.status))
                    .or_default() += 1;
                *t.statuses.entry(r.status.to_string()).or_default() += 1;
                *t.pods.entry(r.pod).or_default() += 1;
                if r.overloaded {
                    *t.overloaded.entry(r.status.to_string()).or_default() += 1;
                }
                *t.versions.entry(r.version.clone()).or_default() += 1;
                Sample {
                    start_us,
                    latency_us,
                    version: r.version,
                    status: r.status,
                    overloaded: r.overloaded,
                }
            }
            Err(e) => {
                t.error(start_us, format!("{e:#}"));
                Sample {
                    start_us,
                    latency_us,
                    version: "-".into(),
                    status: 0,
                    overloaded: false,
                }
            }
        };
        if o.trace {
            t.trace.push(sample);
        }
    }
    t.connections = client.connects;
    t
}

fn render(t: &mut Tally, elapsed: Duration, trace: bool) -> String {
    t.latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        if t.latencies_us.is_empty() {
            return 0.0;
        }
        let i =
            ((t.latencies_us.len() as f64 * p).ceil() as usize).clamp(1, t.latencies_us.len()) - 1;
        t.latencies_us[i] as f64 / 1000.0
    };
    let map = |m: &BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{}:{v}", json_str(k)))
            .collect::<Vec<_>>()
            .join(",")
    };
    t.errors_seen.sort();
    let mut samples: Vec<&str> = Vec::new();
    for (_, m) in &t.errors_seen {
        if samples.len() < ERROR_SAMPLES && !samples.contains(&m.as_str()) {
            samples.push(m);
        }
    }
    let mut out = format!(
        "{{\"sent\":{},\"ok\":{},\"errors\":{},\"versions\":{{{}}},\"statuses\":{{{}}},\"by\":{{{}}},\"pods\":{{{}}},\"overloaded\":{},\"overloaded_statuses\":{{{}}},\"connections\":{},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3},\"min_ms\":{:.3},\"seconds\":{:.3},\"first_error\":{},\"error_samples\":[{}]",
        t.sent,
        t.sent - t.errors,
        t.errors,
        map(&t.versions),
        map(&t.statuses),
        map(&t.by),
        map(&t.pods),
        t.overloaded.values().sum::<u64>(),
        map(&t.overloaded),
        t.connections,
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0),
        t.latencies_us.first().map_or(0.0, |us| *us as f64 / 1000.0),
        elapsed.as_secs_f64(),
        samples.first().map_or("null".to_owned(), |m| json_str(m)),
        samples
            .iter()
            .map(|m| json_str(m))
            .collect::<Vec<_>>()
            .join(","),
    );
    if trace {
        t.trace.sort_by_key(|s| s.start_us);
        let rows: Vec<String> = t
            .trace
            .iter()
            .map(|s| {
                format!(
                    "[{:.3},{:.3},{},{},{}]",
                    s.start_us as f64 / 1000.0,
                    s.latency_us as f64 / 1000.0,
                    json_str(&s.version),
                    s.status,
                    u8::from(s.overloaded)
                )
            })
            .collect();
        out.push_str(&format!(",\"trace\":[{}]", rows.join(",")));
    }
    out.push('}');
    out
}

/// `mesh-bookstore get URL`: one request; the body on stdout, and an error (exit 1) when
/// the status is 400 or more (the body is printed all the same).
pub fn get(url: &str, flags: Vec<(String, String)>) -> Result<()> {
    let mut method = "GET".to_owned();
    let mut include = false;
    let mut rest = Vec::new();
    for (k, v) in flags {
        match k.as_str() {
            "method" => {
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_uppercase()) {
                    bail!("--method {v:?}: not an HTTP method (GET, OPTIONS, ...)");
                }
                method = v;
            }
            "include" => include = true,
            _ => rest.push((k, v)),
        }
    }
    let o = Options::parse(url, rest)?;
    let r = Client::default().request(&method, &o.target, &o.headers, o.timeout)?;
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if include {
        // As `curl -i`: the status line and the headers, a blank line, the body.
        for l in &r.head {
            writeln!(out, "{l}")?;
        }
        writeln!(out)?;
    }
    out.write_all(&r.body)?;
    out.flush()?;
    if r.status >= 400 {
        bail!("HTTP {} from {url}", r.status);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{BufReader, Write};
    use std::net::TcpListener;

    use super::*;

    fn options(url: &str, flags: &[(&str, &str)]) -> Options {
        Options::parse(
            url,
            flags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
        .unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn json(line: &str, key: &str) -> String {
        let rest = line
            .split(&format!("\"{key}\":"))
            .nth(1)
            .unwrap_or_else(|| panic!("no {key} in {line}"));
        let mut depth = 0;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '{' | '[' => depth += 1,
                '}' | ']' if depth == 0 => {
                    end = i;
                    break;
                }
                '}' | ']' => depth -= 1,
                ',' if depth == 0 => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        rest[..end].to_owned()
    }

    /// A server that answers every request on a connection with `answer`, closing after
    /// `per_conn` answers (0: never).
    fn canned(answer: &'static str, per_conn: usize) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut w = c.try_clone().unwrap_or_else(|e| panic!("{e}"));
                    let mut r = BufReader::new(c);
                    let mut served = 0;
                    while let Ok(Some(_)) = crate::http::read_head(&mut r) {
                        if w.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                        served += 1;
                        if served == per_conn {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    #[test]
    fn concurrent_workers_keep_their_connections_and_count_by_version_and_status() {
        let o = crate::serve::Options {
            port: 0,
            id: crate::serve::Identity {
                service: "s".into(),
                version: "v1".into(),
                pod: "p-1".into(),
            },
            fail_rate: 0.0,
            fail_status: 503,
            shutdown_delay: Duration::ZERO,
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let server = Arc::new(crate::serve::Server::new(&o));
        let s = server.clone();
        std::thread::spawn(move || s.run(listener));
        let url = format!("http://127.0.0.1:{port}/status/200,503");
        let line = run(options(
            &url,
            &[("count", "400"), ("concurrency", "4"), ("trace", "")],
        ));
        assert_eq!(json(&line, "sent"), "400", "{line}");
        assert_eq!(json(&line, "errors"), "0", "{line}");
        assert_eq!(json(&line, "connections"), "4", "{line}");
        assert_eq!(json(&line, "pods"), r#"{"p-1":400}"#, "{line}");
        let ok: u64 = json(&json(&line, "by"), "v1 200").parse().unwrap_or(0);
        let failed: u64 = json(&json(&line, "by"), "v1 503").parse().unwrap_or(0);
        assert_eq!(ok + failed, 400, "{line}");
        assert!(ok > 100 && failed > 100, "{line}");
        assert_eq!(json(&line, "overloaded"), "0");
        assert_eq!(json(&line, "trace").matches("],[").count(), 399, "{line}");
        let stats = server.stats();
        assert_eq!(
            (stats.accepted, stats.max_open, stats.requests),
            (4, 4, 400)
        );
        assert_eq!(json(&line, "error_samples"), "[]");
        assert_eq!(json(&line, "first_error"), "null");
    }

    #[test]
    fn overloaded_answers_are_counted_and_closed_connections_made_anew() {
        let port = canned(
            "HTTP/1.1 503 Service Unavailable\r\nx-envoy-overloaded: true\r\ncontent-length: 18\r\nconnection: close\r\n\r\nupstream overflow\n",
            1,
        );
        let line = run(options(
            &format!("http://127.0.0.1:{port}/"),
            &[("count", "30"), ("concurrency", "2")],
        ));
        assert_eq!(json(&line, "overloaded"), "30", "{line}");
        assert_eq!(
            json(&line, "overloaded_statuses"),
            r#"{"503":30}"#,
            "{line}"
        );
        assert_eq!(json(&line, "by"), r#"{"- 503":30}"#, "{line}");
        // Connection: close on every answer: each request on a connection of its own.
        assert_eq!(
            (json(&line, "errors"), json(&line, "connections")),
            ("0".into(), "30".into()),
            "{line}"
        );
    }

    #[test]
    fn a_connection_closed_without_notice_is_an_error_then_made_anew() {
        // Closes after two answers without saying so: the third request on that
        // connection gets no answer (an error, as a user would see it), the next reconnects.
        let port = canned("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", 2);
        let line = run(options(
            &format!("http://127.0.0.1:{port}/"),
            &[("count", "9")],
        ));
        assert_eq!(
            (
                json(&line, "ok"),
                json(&line, "errors"),
                json(&line, "connections")
            ),
            ("6".into(), "3".into(), "3".into()),
            "{line}"
        );
        assert_ne!(json(&line, "error_samples"), "[]", "{line}");
    }

    #[test]
    fn errors_are_counted_with_samples() {
        // A port nobody listens on.
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
            l.local_addr().map(|a| a.port()).unwrap_or(0)
        };
        let line = run(options(
            &format!("http://127.0.0.1:{port}/"),
            &[("count", "5")],
        ));
        assert_eq!(
            (
                json(&line, "sent"),
                json(&line, "ok"),
                json(&line, "errors")
            ),
            ("5".into(), "0".into(), "5".into()),
            "{line}"
        );
        assert!(
            json(&line, "first_error").contains("connect 127.0.0.1"),
            "{line}"
        );
        assert_eq!(
            json(&line, "error_samples").matches("connect").count(),
            1,
            "{line}"
        );
    }

    #[test]
    fn a_request_with_no_answer_times_out_and_says_so() {
        // Accepts, reads, never answers.
        let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
        std::thread::spawn(move || {
            let held: Vec<_> = l.incoming().flatten().collect();
            drop(held);
        });
        let t0 = Instant::now();
        let line = run(options(
            &format!("http://127.0.0.1:{port}/"),
            &[("count", "2"), ("timeout", "0.2")],
        ));
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        assert_eq!(json(&line, "errors"), "2", "{line}");
        assert!(
            json(&line, "first_error").contains("no answer within 200ms"),
            "{line}"
        );
    }

    #[test]
    fn duration_and_rate() {
        let port = canned(
            "HTTP/1.1 200 OK\r\nX-Version: v2\r\ncontent-length: 0\r\n\r\n",
            0,
        );
        let url = format!("http://127.0.0.1:{port}/");
        let t0 = Instant::now();
        let line = run(options(&url, &[("duration", "0.5"), ("concurrency", "2")]));
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_secs(3),
            "{took:?}"
        );
        assert!(
            json(&line, "sent").parse::<u64>().unwrap_or(0) > 10,
            "{line}"
        );
        // 100 a second for 0.5 s: 50 requests (the one due at 0.5 s is not sent).
        let line = run(options(
            &url,
            &[("duration", "0.5"), ("rate", "100"), ("concurrency", "2")],
        ));
        assert_eq!(json(&line, "sent"), "50", "{line}");
        assert_eq!(json(&line, "versions"), r#"{"v2":50}"#, "{line}");
        // A count caps a duration.
        let line = run(options(&url, &[("duration", "5"), ("count", "7")]));
        assert_eq!(json(&line, "sent"), "7", "{line}");
    }

    #[test]
    fn chunked_and_unframed_bodies() {
        let port = canned(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            0,
        );
        let t = parse_url(&format!("http://127.0.0.1:{port}/")).unwrap_or_else(|e| panic!("{e}"));
        let mut c = Client::default();
        for _ in 0..3 {
            let r = c
                .get(&t, &[], Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!(r.body, b"abcde");
        }
        assert_eq!(c.connects, 1);
        let port = canned("HTTP/1.1 200 OK\r\n\r\nto the end", 1);
        let t = parse_url(&format!("http://127.0.0.1:{port}/")).unwrap_or_else(|e| panic!("{e}"));
        let r = Client::default()
            .get(&t, &[], Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(r.body, b"to the end");
    }

    #[test]
    fn flags() {
        let o = options("http://h:1/", &[]);
        assert_eq!(
            (o.count, o.duration, o.concurrency, o.rate, o.trace),
            (Some(100), None, 1, 0.0, false)
        );
        let o = options(
            "http://h:1/",
            &[
                ("duration", "20"),
                ("rate", "200"),
                ("header", "end-user: jason"),
                ("timeout", "2s"),
            ],
        );
        assert_eq!(
            (o.count, o.duration, o.rate, o.timeout),
            (
                None,
                Some(Duration::from_secs(20)),
                200.0,
                Duration::from_secs(2)
            )
        );
        assert_eq!(o.headers, ["end-user: jason"]);
        for bad in [
            ("rate", "-1"),
            ("duration", "x"),
            ("header", "nocolon"),
            ("nope", "1"),
        ] {
            let f = vec![(bad.0.to_owned(), bad.1.to_owned())];
            assert!(Options::parse("http://h:1/", f).is_err(), "{bad:?}");
        }
    }
}
