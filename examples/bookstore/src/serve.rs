//! `mesh-bookstore serve`: an httpbin-like backend that says which service, version and pod
//! answered, fails a share of requests on purpose, counts its connections, and shuts down
//! without cutting a request.
//!
//! - `GET /status/<codes>` answers one of `codes`: `503`, or a random pick as httpbin
//!   does, `200,503` (equal odds) or `200:7,503:3` (weighted).
//! - `GET /delay/<ms>` answers 200 after `ms` milliseconds.
//! - `GET /stats` answers what the server counted (JSON, below); `GET /stats/reset` zeroes
//!   the counters first (the high-water mark restarts at the connections open now).
//! - `GET /ready` answers 200, or 503 once shutting down (a readiness probe).
//! - Anything else: 200 and who answered:
//!   `{"service":..,"version":..,"pod":..,"method":..,"path":..,"headers":{..}}`.
//!
//! Every answer carries `X-Version` and `X-Pod`. With `--fail-rate F` (env `FAIL_RATE`), a
//! share F of the requests (every path but `/stats` and `/ready`, which a readiness probe
//! must be able to trust) is answered with `--fail-status` (env `FAIL_STATUS`, default
//! 503) instead, still with the identity body and `X-Fault: injected`.
//!
//! `/stats`: `{"service","version","pod","connections_accepted","connections_open",
//! "connections_max_open","requests","failed","in_flight","draining"}`. Requests for
//! `/stats` and `/ready` are not counted, and a connection is counted from its first other
//! request: reading the counters (e.g. `kubectl exec ... get http://127.0.0.1:9080/stats`)
//! and the kubelet's readiness probes do not change them.
//!
//! SIGTERM (the kubelet deleting the pod): `/ready` turns 503, every answer from then on
//! carries `Connection: close` (and the connection is closed after it), and the server
//! keeps accepting for `--shutdown-delay` seconds (env `SHUTDOWN_DELAY`, default 5); then
//! it waits for the requests in flight and exits 0. That is how a rolling restart cuts no
//! request: the endpoint is taken out of rotation while the pod still answers.

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::http::{Head, json_str, read_head};

/// Who answers.
#[derive(Debug, Clone)]
pub struct Identity {
    pub service: String,
    pub version: String,
    pub pod: String,
}

/// `serve`'s settings, from flags and the environment.
#[derive(Debug, Clone)]
pub struct Options {
    pub port: u16,
    pub id: Identity,
    /// Share of requests answered with `fail_status`, 0 to 1.
    pub fail_rate: f64,
    pub fail_status: u16,
    /// How long to keep serving after SIGTERM.
    pub shutdown_delay: Duration,
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.trim().is_empty())
}

impl Options {
    /// Defaults and the environment (`SERVICE_NAME`, `VERSION`, `POD_NAME`, `FAIL_RATE`,
    /// `FAIL_STATUS`, `SHUTDOWN_DELAY`), then `flags` over them.
    pub fn parse(flags: Vec<(String, String)>) -> Result<Options> {
        let mut o = Options {
            port: 9080,
            id: Identity {
                service: env("SERVICE_NAME").unwrap_or_else(|| "reviews".into()),
                version: env("VERSION").unwrap_or_else(|| "v1".into()),
                pod: env("POD_NAME").unwrap_or_else(|| "unknown".into()),
            },
            fail_rate: 0.0,
            fail_status: 503,
            shutdown_delay: Duration::from_secs(5),
        };
        let mut set = |k: &str, v: &str| -> Result<()> {
            match k {
                "port" => {
                    o.port = v
                        .parse()
                        .with_context(|| format!("--port {v}: not a port"))?
                }
                "service" => o.id.service = v.to_owned(),
                "version" => o.id.version = v.to_owned(),
                "fail-rate" => {
                    o.fail_rate = v
                        .trim()
                        .parse()
                        .ok()
                        .filter(|r: &f64| (0.0..=1.0).contains(r))
                        .with_context(|| format!("fail rate {v:?}: not a number from 0 to 1"))?
                }
                "fail-status" => {
                    o.fail_status = v
                        .trim()
                        .parse()
                        .ok()
                        .filter(|s| (200..=599).contains(s))
                        .with_context(|| format!("fail status {v:?}: not a status 200-599"))?
                }
                "shutdown-delay" => {
                    let secs: f64 = v
                        .trim()
                        .trim_end_matches('s')
                        .parse()
                        .ok()
                        .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                        .with_context(|| format!("shutdown delay {v:?}: not seconds"))?;
                    o.shutdown_delay = Duration::from_secs_f64(secs);
                }
                _ => bail!("unknown flag --{k}\n{}", crate::USAGE),
            }
            Ok(())
        };
        for (k, name) in [
            ("fail-rate", "FAIL_RATE"),
            ("fail-status", "FAIL_STATUS"),
            ("shutdown-delay", "SHUTDOWN_DELAY"),
        ] {
            if let Some(v) = env(name) {
                set(k, &v).with_context(|| format!("env {name}"))?;
            }
        }
        for (k, v) in flags {
            set(&k, &v)?;
        }
        Ok(o)
    }
}

/// Runs the server until SIGTERM (then as the module docs say) and exits 0.
pub fn serve(o: Options) -> Result<()> {
    // Before any thread exists, so every thread inherits the mask and only the waiter
    // below takes the signal. Blocked, it is delivered even to PID 1 (a container's
    // entrypoint), which ignores signals it has no handler for.
    let mut term = nix::sys::signal::SigSet::empty();
    term.add(nix::sys::signal::Signal::SIGTERM);
    term.thread_block().context("blocking SIGTERM")?;
    let listener = TcpListener::bind(("::", o.port))
        .or_else(|_| TcpListener::bind(("0.0.0.0", o.port)))
        .with_context(|| format!("cannot listen on port {}", o.port))?;
    eprintln!(
        "bookstore {} {} listening on {} (fail rate {}, fail status {}, shutdown delay {:?})",
        o.id.service, o.id.version, o.port, o.fail_rate, o.fail_status, o.shutdown_delay
    );
    let server = Arc::new(Server::new(&o));
    {
        let server = server.clone();
        let delay = o.shutdown_delay;
        std::thread::spawn(move || {
            match term.wait() {
                Ok(sig) => eprintln!("{sig}: serving with Connection: close for {delay:?}"),
                Err(e) => {
                    eprintln!("waiting for SIGTERM: {e}");
                    return;
                }
            }
            server.start_drain();
            std::thread::sleep(delay);
            server.wait_idle();
            eprintln!("shut down after {} requests", server.stats().requests);
            std::process::exit(0);
        });
    }
    server.run(listener);
    Ok(())
}

/// What `/stats` reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub accepted: u64,
    pub open: u64,
    pub max_open: u64,
    pub requests: u64,
    pub failed: u64,
    pub in_flight: u64,
}

/// The server: shared by every connection's thread.
pub struct Server {
    id: Identity,
    fail_rate: f64,
    fail_status: u16,
    counts: Mutex<Counts>,
    draining: AtomicBool,
    rng: Rng,
}

impl Server {
    pub fn new(o: &Options) -> Server {
        Server {
            id: o.id.clone(),
            fail_rate: o.fail_rate,
            fail_status: o.fail_status,
            counts: Mutex::new(Counts::default()),
            draining: AtomicBool::new(false),
            rng: Rng::seeded(),
        }
    }

    /// Accepts until the listener fails, one thread per connection.
    pub fn run(self: &Arc<Server>, listener: TcpListener) {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let server = self.clone();
            std::thread::spawn(move || {
                let _ = server.connection(conn);
            });
        }
    }

    pub fn stats(&self) -> Counts {
        *self.counts()
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What SIGTERM does: `/ready` 503, `Connection: close` on every answer.
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Returns once no request is being answered.
    pub fn wait_idle(&self) {
        while self.counts().in_flight > 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn connection(&self, conn: TcpStream) -> std::io::Result<()> {
        let _ = conn.set_nodelay(true);
        let mut w = conn.try_clone()?;
        let mut r = BufReader::new(conn);
        let mut counted = Counted(None);
        while let Some(head) = read_head(&mut r)? {
            let mut body = vec![0u8; head.content_length];
            r.read_exact(&mut body)?;
            let meta = is_meta(head.route());
            if !meta && counted.0.is_none() {
                let mut c = self.counts();
                c.accepted += 1;
                c.open += 1;
                c.max_open = c.max_open.max(c.open);
                counted.0 = Some(self);
            }
            let answer = {
                let _busy = InFlight::new(self, !meta);
                self.answer(&head)
            };
            let close = head.close || self.draining();
            answer.write(&mut w, &self.id, close)?;
            if close {
                break;
            }
        }
        Ok(())
    }

    /// The answer to one request (after any `/delay`).
    fn answer(&self, head: &Head) -> Answer {
        let route = head.route();
        match route {
            "/stats" | "/stats/reset" => {
                let c = {
                    let mut c = self.counts();
                    if route == "/stats/reset" {
                        *c = Counts {
                            open: c.open,
                            max_open: c.open,
                            in_flight: c.in_flight,
                            ..Counts::default()
                        };
                    }
                    *c
                };
                return Answer::json(200, self.stats_json(&c), false);
            }
            "/ready" => {
                let status = if self.draining() { 503 } else { 200 };
                return Answer::json(status, self.identity_json(head), false);
            }
            _ => {}
        }
        if self.fail_rate > 0.0 && self.rng.next_f64() < self.fail_rate {
            self.counts().failed += 1;
            return Answer::json(self.fail_status, self.identity_json(head), true);
        }
        let mut status = 200;
        if let Some(codes) = route.strip_prefix("/status/") {
            status = pick_status(codes, self.rng.next_f64()).unwrap_or(400);
        } else if let Some(ms) = route.strip_prefix("/delay/") {
            match ms.trim_end_matches('/').parse::<u64>() {
                Ok(ms) => std::thread::sleep(Duration::from_millis(ms.min(600_000))),
                Err(_) => status = 400,
            }
        }
        Answer::json(status, self.identity_json(head), false)
    }

    fn identity_json(&self, head: &Head) -> String {
        let headers: Vec<String> = head
            .headers
            .iter()
            .map(|(k, v)| format!("{}:{}", json_str(k), json_str(v)))
            .collect();
        format!(
            "{{\"service\":{},\"version\":{},\"pod\":{},\"method\":{},\"path\":{},\"headers\":{{{}}}}}\n",
            json_str(&self.id.service),
            json_str(&self.id.version),
            json_str(&self.id.pod),
            json_str(&head.method),
            json_str(&head.path),
            headers.join(",")
        )
    }

    fn stats_json(&self, c: &Counts) -> String {
        format!(
            "{{\"service\":{},\"version\":{},\"pod\":{},\"connections_accepted\":{},\"connections_open\":{},\"connections_max_open\":{},\"requests\":{},\"failed\":{},\"in_flight\":{},\"draining\":{}}}\n",
            json_str(&self.id.service),
            json_str(&self.id.version),
            json_str(&self.id.pod),
            c.accepted,
            c.open,
            c.max_open,
            c.requests,
            c.failed,
            c.in_flight,
            self.draining()
        )
    }
}

/// `/stats` and `/ready`: asked by tests and probes, never counted as requests served,
/// and a connection is counted from its first other request.
fn is_meta(route: &str) -> bool {
    route == "/stats" || route.starts_with("/stats/") || route == "/ready"
}

/// A counted connection: no longer open when its thread ends.
struct Counted<'a>(Option<&'a Server>);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.0 {
            let mut c = s.counts();
            c.open = c.open.saturating_sub(1);
        }
    }
}

/// A request being answered (and, unless it is for `/stats` or `/ready`, counted as served).
struct InFlight<'a>(&'a Server);

impl<'a> InFlight<'a> {
    fn new(s: &'a Server, count: bool) -> InFlight<'a> {
        let mut c = s.counts();
        c.in_flight += 1;
        if count {
            c.requests += 1;
        }
        InFlight(s)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut c = self.0.counts();
        c.in_flight = c.in_flight.saturating_sub(1);
    }
}

/// One response, before it is written.
struct Answer {
    status: u16,
    body: String,
    injected: bool,
}

impl Answer {
    fn json(status: u16, body: String, injected: bool) -> Answer {
        Answer {
            status,
            body,
            injected,
        }
    }

    fn write(&self, w: &mut impl Write, id: &Identity, close: bool) -> std::io::Result<()> {
        // 204 and 304 never have a body (nor, for 204, a Content-Length).
        let bodiless = self.status == 204 || self.status == 304;
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nX-Version: {}\r\nX-Pod: {}\r\n",
            self.status,
            reason(self.status),
            id.version,
            id.pod
        );
        if !bodiless {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                self.body.len()
            ));
        }
        if self.injected {
            head.push_str("X-Fault: injected\r\n");
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        if !bodiless {
            head.push_str(&self.body);
        }
        w.write_all(head.as_bytes())?;
        w.flush()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        418 => "I'm a teapot",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// httpbin's `/status/<codes>`: one code, or a comma-separated list to pick from at random,
/// each with an optional `:weight` (default 1). `roll` is uniform in [0, 1). `None` when
/// the list is malformed or a code is not 200-599.
pub fn pick_status(codes: &str, roll: f64) -> Option<u16> {
    let mut choices = Vec::new();
    for part in codes.trim_end_matches('/').split(',') {
        let (code, weight) = match part.split_once(':') {
            Some((c, w)) => (c, w.trim().parse::<f64>().ok()?),
            None => (part, 1.0),
        };
        let code: u16 = code.trim().parse().ok()?;
        if !(200..=599).contains(&code) || !weight.is_finite() || weight < 0.0 {
            return None;
        }
        choices.push((code, weight));
    }
    let total: f64 = choices.iter().map(|(_, w)| w).sum();
    if total <= 0.0 {
        return None;
    }
    let mut at = roll * total;
    for &(code, w) in &choices {
        if at < w {
            return Some(code);
        }
        at -= w;
    }
    choices
        .iter()
        .rev()
        .find(|(_, w)| *w > 0.0)
        .map(|(c, _)| *c)
}

/// splitmix64 over a shared counter: good enough odds for failing on purpose, no crate.
pub struct Rng(AtomicU64);

impl Rng {
    pub fn seeded() -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Rng(AtomicU64::new(t ^ (u64::from(std::process::id()) << 32)))
    }

    #[cfg(test)]
    pub fn with_seed(seed: u64) -> Rng {
        Rng(AtomicU64::new(seed))
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&self) -> f64 {
        let mut z = self
            .0
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Client, Target};

    fn options(fail_rate: f64) -> Options {
        Options {
            port: 0,
            id: Identity {
                service: "httpbin".into(),
                version: "v9".into(),
                pod: "httpbin-v9-abc".into(),
            },
            fail_rate,
            fail_status: 503,
            shutdown_delay: Duration::ZERO,
        }
    }

    /// A server on a loopback port, its accept loop on a thread.
    fn start(o: &Options) -> (Arc<Server>, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let server = Arc::new(Server::new(o));
        let s = server.clone();
        std::thread::spawn(move || s.run(listener));
        (server, port)
    }

    fn target(port: u16, path: &str) -> Target {
        Target {
            host: "127.0.0.1".into(),
            port,
            path: path.into(),
        }
    }

    fn get(c: &mut Client, port: u16, path: &str) -> crate::http::Response {
        c.get(&target(port, path), &[], Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
    }

    #[test]
    fn statuses_delays_and_identity() {
        let (_s, port) = start(&options(0.0));
        let mut c = Client::default();
        let r = get(&mut c, port, "/anything?x=1");
        assert_eq!(
            (r.status, r.version.as_str(), r.pod.as_str()),
            (200, "v9", "httpbin-v9-abc")
        );
        let body = String::from_utf8_lossy(&r.body);
        assert!(
            body.contains(r#""service":"httpbin""#) && body.contains(r#""path":"/anything?x=1""#),
            "{body}"
        );
        for (path, want) in [
            ("/status/503", 503),
            ("/status/418", 418),
            ("/status/204", 204),
            ("/status/99", 400),
            ("/status/x", 400),
            ("/status/200:0,502:1", 502),
        ] {
            assert_eq!(get(&mut c, port, path).status, want, "{path}");
        }
        let t0 = std::time::Instant::now();
        assert_eq!(get(&mut c, port, "/delay/150").status, 200);
        assert!(
            t0.elapsed() >= Duration::from_millis(150),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(get(&mut c, port, "/delay/abc").status, 400);
        // All of it on one kept-alive connection.
        assert_eq!(c.connects, 1);
    }

    #[test]
    fn weighted_status_picks() {
        assert_eq!(pick_status("503", 0.99), Some(503));
        assert_eq!(pick_status("200,503", 0.49), Some(200));
        assert_eq!(pick_status("200,503", 0.5), Some(503));
        assert_eq!(pick_status("200:7,503:3", 0.69), Some(200));
        assert_eq!(pick_status("200:7,503:3", 0.71), Some(503));
        assert_eq!(pick_status("200:1,503:0", 0.9999), Some(200));
        assert_eq!(pick_status("200:0", 0.1), None);
        assert_eq!(pick_status("600", 0.1), None);
        assert_eq!(pick_status("200:-1,503", 0.1), None);
        let rng = Rng::with_seed(7);
        let n = 20_000;
        let fails = (0..n)
            .filter(|_| pick_status("200:7,503:3", rng.next_f64()) == Some(503))
            .count();
        let share = fails as f64 / n as f64;
        assert!((share - 0.3).abs() < 0.02, "{share}");
    }

    #[test]
    fn fail_rate_fails_that_share_but_never_stats_or_ready() {
        let (s, port) = start(&options(0.5));
        let mut c = Client::default();
        let n: u32 = 2000;
        let mut failed: u32 = 0;
        for _ in 0..n {
            let r = get(&mut c, port, "/get");
            if r.status == 503 {
                failed += 1;
                assert_eq!(r.version, "v9", "a failure still says who answered");
            } else {
                assert_eq!(r.status, 200);
            }
        }
        let share = f64::from(failed) / f64::from(n);
        assert!((share - 0.5).abs() < 0.05, "{share}");
        for _ in 0..50 {
            assert_eq!(get(&mut c, port, "/ready").status, 200);
            assert_eq!(get(&mut c, port, "/stats").status, 200);
        }
        let counts = s.stats();
        assert_eq!(
            (counts.requests, counts.failed),
            (u64::from(n), u64::from(failed))
        );

        let (_s, port) = start(&options(1.0));
        assert_eq!(get(&mut Client::default(), port, "/status/200").status, 503);
        let mut o = options(1.0);
        o.fail_status = 500;
        let (_s, port) = start(&o);
        assert_eq!(get(&mut Client::default(), port, "/").status, 500);
    }

    fn stats(port: u16) -> String {
        let r = get(&mut Client::default(), port, "/stats");
        String::from_utf8_lossy(&r.body).into_owned()
    }

    fn field(json: &str, name: &str) -> u64 {
        json.split(&format!("\"{name}\":"))
            .nth(1)
            .and_then(|r| r.split([',', '}']).next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {json}"))
    }

    #[test]
    fn stats_count_connections_but_not_their_own() {
        let (_s, port) = start(&options(0.0));
        // Three connections at once, each with two requests.
        let mut clients: Vec<Client> = (0..3).map(|_| Client::default()).collect();
        for c in &mut clients {
            get(c, port, "/a");
            get(c, port, "/b");
        }
        let s = stats(port);
        assert_eq!(
            [
                field(&s, "connections_accepted"),
                field(&s, "connections_open"),
                field(&s, "connections_max_open"),
                field(&s, "requests")
            ],
            [3, 3, 3, 6],
            "{s}"
        );
        // Two close: open drops, the high-water mark stays.
        clients.truncate(1);
        let s = crate::tests::eventually(|| {
            let s = stats(port);
            (field(&s, "connections_open") == 1).then_some(s)
        });
        assert_eq!(field(&s, "connections_max_open"), 3, "{s}");
        // A reset restarts the mark at what is open now.
        let r = get(&mut Client::default(), port, "/stats/reset");
        let s = String::from_utf8_lossy(&r.body).into_owned();
        assert_eq!(
            [
                field(&s, "connections_accepted"),
                field(&s, "connections_max_open"),
                field(&s, "requests"),
                field(&s, "connections_open")
            ],
            [0, 1, 0, 1],
            "{s}"
        );
    }

    #[test]
    fn draining_closes_each_connection_after_its_answer_and_readiness_fails() {
        let (s, port) = start(&options(0.0));
        let mut c = Client::default();
        get(&mut c, port, "/");
        get(&mut c, port, "/");
        assert_eq!(c.connects, 1);
        s.start_drain();
        assert_eq!(get(&mut c, port, "/").status, 200);
        assert_eq!(get(&mut c, port, "/").status, 200);
        assert_eq!(get(&mut c, port, "/").status, 200);
        assert_eq!(
            c.connects, 3,
            "each answer while draining carries Connection: close"
        );
        assert_eq!(get(&mut c, port, "/ready").status, 503);
        assert!(stats(port).contains("\"draining\":true"));
        s.wait_idle();
    }

    #[test]
    fn options_from_flags_and_environment_values() {
        let flags = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let o = Options::parse(flags(&[
            ("fail-rate", "0.3"),
            ("fail-status", "500"),
            ("shutdown-delay", "2.5s"),
            ("version", "v2"),
        ]))
        .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            (
                o.fail_rate,
                o.fail_status,
                o.shutdown_delay,
                o.id.version.as_str()
            ),
            (0.3, 500, Duration::from_millis(2500), "v2")
        );
        for bad in [
            ("fail-rate", "1.5"),
            ("fail-rate", "x"),
            ("fail-status", "99"),
            ("shutdown-delay", "-1"),
            ("nope", "1"),
        ] {
            assert!(Options::parse(flags(&[bad])).is_err(), "{bad:?}");
        }
    }
}
