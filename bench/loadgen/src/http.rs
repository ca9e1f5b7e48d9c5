//! The HTTP/1.1 workload behind `bench/http`: a keep-alive server answering every
//! request with a fixed-size body, and a client that drives N keep-alive connections
//! at a fixed total rate or as fast as they go, timing every request itself (exact
//! quantiles from every sample, not a coarse histogram).
//!
//! Only what the benchmark needs of HTTP/1.1: requests without a body (a request with
//! `Content-Length` has it read and dropped), responses with `Content-Length` (a proxy
//! that re-frames them as chunked fails the run loudly), no pipelining by the client.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::{connect, listen, spawn_handler};

/// Size of the server's response body unless told otherwise.
pub const BODY: usize = 1024;
/// Unmeasured requests each connection makes first (proxies' pools and lookups warm).
const WARMUP: usize = 20;
/// A request or response head larger than this is refused.
const MAX_HEAD: usize = 16 * 1024;

/// A connection's read side, with what was read past the current message kept.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    /// Bytes of `buf` that are read and not yet consumed start here.
    start: usize,
}

/// A parsed message head: the first line and the headers, lower-cased names.
#[derive(Debug, Clone)]
pub struct Head {
    pub first_line: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn content_length(&self) -> io::Result<usize> {
        match self.get("content-length") {
            None => Ok(0),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| bad(format!("content-length {v:?}"))),
        }
    }
    fn wants_close(&self) -> bool {
        self.get("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn find_head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

impl Conn {
    fn new(s: TcpStream) -> Conn {
        Conn {
            s,
            buf: Vec::with_capacity(8 * 1024),
            start: 0,
        }
    }

    /// Reads more bytes into the buffer; `false` at end of stream.
    fn fill(&mut self) -> io::Result<bool> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + 8 * 1024, 0);
        let n = loop {
            match self.s.read(&mut self.buf[len..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.buf.truncate(len);
                    return Err(e);
                }
            }
        };
        self.buf.truncate(len + n);
        Ok(n > 0)
    }

    /// The next message head; `None` at a clean end of stream before one.
    fn head(&mut self) -> io::Result<Option<Head>> {
        loop {
            if let Some(end) = find_head_end(&self.buf[self.start..]) {
                let raw = &self.buf[self.start..self.start + end - 4];
                let text = std::str::from_utf8(raw).map_err(|_| bad("non-UTF-8 head".into()))?;
                let mut lines = text.split("\r\n");
                let first_line = lines.next().unwrap_or_default().to_owned();
                let headers = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .collect();
                self.start += end;
                return Ok(Some(Head {
                    first_line,
                    headers,
                }));
            }
            if self.buf.len() - self.start > MAX_HEAD {
                return Err(bad("message head too large".into()));
            }
            if !self.fill()? {
                return if self.buf.len() == self.start {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "end of stream inside a message head",
                    ))
                };
            }
        }
    }

    /// Consumes `len` body bytes.
    fn skip(&mut self, mut len: usize) -> io::Result<()> {
        loop {
            let have = (self.buf.len() - self.start).min(len);
            self.start += have;
            len -= have;
            if len == 0 {
                return Ok(());
            }
            if !self.fill()? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "end of stream inside a body",
                ));
            }
        }
    }
}

/// Serves HTTP/1.1 keep-alive on `port` of every address (IPv4), a thread per
/// connection; each response carries a `body`-byte body and says where the request
/// arrived (`x-local`) and whom the server saw (`x-peer`). Returns once bound.
pub fn serve_http(port: u16, body: usize) -> io::Result<()> {
    let l = listen(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port))?;
    let body: Arc<[u8]> = vec![b'x'; body].into();
    serve_http_on(l, body)
}

fn serve_http_on(l: TcpListener, body: Arc<[u8]>) -> io::Result<()> {
    spawn_handler(move || {
        for s in l.incoming() {
            let Ok(s) = s else {
                thread::sleep(Duration::from_millis(5));
                continue;
            };
            let body = body.clone();
            let _ = spawn_handler(move || {
                let _ = serve_http_conn(s, &body);
            });
        }
    })
}

fn serve_http_conn(s: TcpStream, body: &[u8]) -> io::Result<()> {
    s.set_nodelay(true)?;
    let local = s.local_addr()?;
    let peer = s.peer_addr()?;
    let mut head_bytes = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-local: {local}\r\nx-peer: {peer}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    head_bytes.extend_from_slice(body);
    let response = head_bytes;
    let close_response = {
        let mut r = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-local: {local}\r\nx-peer: {peer}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    let mut c = Conn::new(s);
    while let Some(h) = c.head()? {
        let len = h.content_length()?;
        c.skip(len)?;
        if h.wants_close() {
            return c.s.write_all(&close_response);
        }
        c.s.write_all(&response)?;
    }
    Ok(())
}

fn request_bytes(authority: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: {authority}\r\nuser-agent: mesh-loadgen\r\n\r\n")
        .into_bytes()
}

/// One exchange on `c`: the response's status and head (the body is read and counted).
fn exchange(c: &mut Conn, request: &[u8]) -> io::Result<(u16, Head, usize)> {
    c.s.write_all(request)?;
    let h = c
        .head()?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed before a response"))?;
    if h.get("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        return Err(bad("chunked response (expected content-length)".into()));
    }
    let status: u16 = h
        .first_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("status line {:?}", h.first_line)))?;
    let len = h.content_length()?;
    c.skip(len)?;
    Ok((status, h, len))
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// `GET path` once on a new connection: status, headers and body length as JSON.
pub fn http_get(host: IpAddr, port: u16, authority: &str, path: &str) -> io::Result<String> {
    let mut c = Conn::new(connect(SocketAddr::new(host, port))?);
    let local = c.s.local_addr()?;
    let (status, h, len) = exchange(&mut c, &request_bytes(authority, path))?;
    let headers: Vec<String> = h
        .headers
        .iter()
        .map(|(k, v)| format!("[{},{}]", json_str(k), json_str(v)))
        .collect();
    Ok(format!(
        "{{\"status\":{status},\"body_len\":{len},\"client_local\":{},\"headers\":[{}]}}",
        json_str(&local.to_string()),
        headers.join(",")
    ))
}

/// What one load run measured.
#[derive(Debug, Clone)]
pub struct HttpRun {
    /// Every measured request's latency (write of the request to the end of the
    /// response body), sorted, in nanoseconds.
    pub samples_ns: Vec<u64>,
    /// How late each request was sent against its schedule (fixed rate only), sorted.
    pub late_ns: Vec<u64>,
    pub non_200: u64,
    pub seconds: f64,
    pub body_bytes: u64,
}

fn quantile(v: &[u64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((p * v.len() as f64) as usize).min(v.len() - 1);
    v[i] as f64 / 1000.0
}

impl HttpRun {
    pub fn quantile_us(&self, p: f64) -> f64 {
        quantile(&self.samples_ns, p)
    }
    pub fn rps(&self) -> f64 {
        self.samples_ns.len() as f64 / self.seconds
    }
    pub fn to_json(&self) -> String {
        let mean = if self.samples_ns.is_empty() {
            f64::NAN
        } else {
            self.samples_ns.iter().sum::<u64>() as f64 / self.samples_ns.len() as f64 / 1000.0
        };
        // JSON has no NaN: an empty set of samples is null.
        let num = |x: f64| {
            if x.is_finite() {
                format!("{x:.2}")
            } else {
                "null".to_owned()
            }
        };
        format!(
            "{{\"requests\":{},\"seconds\":{:.6},\"rps\":{:.1},\"non_200\":{},\"body_bytes\":{},\
             \"mean_us\":{},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\
             \"max_us\":{},\"late_p50_us\":{},\"late_p99_us\":{}}}",
            self.samples_ns.len(),
            self.seconds,
            self.rps(),
            self.non_200,
            self.body_bytes,
            num(mean),
            num(self.quantile_us(0.5)),
            num(self.quantile_us(0.9)),
            num(self.quantile_us(0.99)),
            num(self.quantile_us(0.999)),
            num(self.quantile_us(1.0)),
            num(quantile(&self.late_ns, 0.5)),
            num(quantile(&self.late_ns, 0.99)),
        )
    }
}

/// `conns` keep-alive connections to `host:port` send `GET /` with `authority` as
/// `Host` for `seconds` (after `WARMUP` unmeasured requests each): at `rate` requests
/// per second in total, each connection on its own evenly spaced schedule (staggered
/// against the others), or as fast as each can when `rate` is 0. A connection waits
/// for each response before it sends the next request; a request sent behind its
/// schedule is counted in `late_ns`.
pub fn http_load(
    host: IpAddr,
    port: u16,
    authority: &str,
    conns: usize,
    rate: f64,
    seconds: f64,
) -> io::Result<HttpRun> {
    let addr = SocketAddr::new(host, port);
    let request: Arc<[u8]> = request_bytes(authority, "/").into();
    let barrier = Arc::new(Barrier::new(conns + 1));
    let start_cell = Arc::new(std::sync::OnceLock::<Instant>::new());
    let workers: Vec<_> = (0..conns)
        .map(|i| {
            let (request, barrier, start_cell) =
                (request.clone(), barrier.clone(), start_cell.clone());
            thread::spawn(move || -> io::Result<(Vec<u64>, Vec<u64>, u64, u64)> {
                let warm = connect(addr).map(Conn::new).and_then(|mut c| {
                    for _ in 0..WARMUP {
                        exchange(&mut c, &request)?;
                    }
                    Ok(c)
                });
                // Always reach the barrier, so one failed connection cannot hang the rest.
                barrier.wait();
                let mut c = warm?;
                let start = *start_cell.get().expect("start set before the barrier");
                let end = start + Duration::from_secs_f64(seconds);
                let mut samples = Vec::with_capacity(if rate > 0.0 {
                    (rate * seconds / conns as f64) as usize + 16
                } else {
                    1 << 16
                });
                let mut late = Vec::new();
                let (mut non_200, mut bytes) = (0u64, 0u64);
                let interval = (rate > 0.0).then(|| Duration::from_secs_f64(conns as f64 / rate));
                let mut next = match interval {
                    Some(iv) => start + iv.mul_f64(i as f64 / conns as f64),
                    None => start,
                };
                loop {
                    if interval.is_some() {
                        if next >= end {
                            break;
                        }
                        let now = Instant::now();
                        if next > now {
                            thread::sleep(next - now);
                        }
                    }
                    let t = Instant::now();
                    // At a fixed rate every send scheduled before the end is made, late
                    // or not (the lag says how late); unbounded, none starts after it.
                    if interval.is_none() && t >= end {
                        break;
                    }
                    if interval.is_some() {
                        late.push(t.saturating_duration_since(next).as_nanos() as u64);
                    }
                    let (status, _, len) = exchange(&mut c, &request)?;
                    samples.push(t.elapsed().as_nanos() as u64);
                    if status != 200 {
                        non_200 += 1;
                    }
                    bytes += len as u64;
                    if let Some(iv) = interval {
                        next += iv;
                    }
                }
                Ok((samples, late, non_200, bytes))
            })
        })
        .collect();
    // Everyone warmed (or failed): the measured phase starts now, for all at once.
    let _ = start_cell.set(Instant::now() + Duration::from_millis(20));
    barrier.wait();
    let mut run = HttpRun {
        samples_ns: Vec::new(),
        late_ns: Vec::new(),
        non_200: 0,
        seconds: 0.0,
        body_bytes: 0,
    };
    let mut first_error = None;
    for w in workers {
        match w.join() {
            Ok(Ok((s, l, n, b))) => {
                run.samples_ns.extend(s);
                run.late_ns.extend(l);
                run.non_200 += n;
                run.body_bytes += b;
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert(io::Error::other("a connection thread panicked"));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    // Requests sent before the end count; the last ones finish just after it.
    run.seconds = seconds;
    run.samples_ns.sort_unstable();
    run.late_ns.sort_unstable();
    Ok(run)
}
