//! `mesh-bookstore serve` answers every request with which service, version and pod it is;
//! `mesh-bookstore load` sends requests and prints, as one JSON line, how many answers came
//! from each version with each status, and the latencies.
//!
//! ```text
//! mesh-bookstore serve [--port 9080] [--service reviews] [--version v1]
//!     GET /status/503      answers 503
//!     GET /delay/250       answers after 250 ms
//!     anything else        200 {"service":"reviews","version":"v1","pod":"...","path":"/x","headers":{...}}
//! mesh-bookstore load URL [--count N] [--concurrency C] [--rate R/s] [--header 'K: V']... [--timeout 10s]
//!     {"sent":N,"ok":..,"errors":..,"versions":{"v1":..},"statuses":{"200":..},"by":{"v1 200":..},
//!      "p50_ms":..,"p90_ms":..,"p99_ms":..,"max_ms":..}
//! ```
//! Service, version and pod also come from `SERVICE_NAME`, `VERSION` and `POD_NAME`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const USAGE: &str = "usage:
  mesh-bookstore serve [--port 9080] [--service NAME] [--version V]
  mesh-bookstore load URL [--count N] [--concurrency C] [--rate PER_SECOND] [--header 'K: V']... [--timeout SECONDS]";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("load") => load(&args[1..]),
        Some("--version" | "-V") => {
            println!("mesh-bookstore {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}

/// `--name value` pairs after the positional arguments.
fn flags(args: &[String]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let name = a
            .strip_prefix("--")
            .with_context(|| format!("unexpected argument {a:?}\n{USAGE}"))?;
        let v = it
            .next()
            .with_context(|| format!("--{name} needs a value"))?;
        out.push((name.to_owned(), v.clone()));
    }
    Ok(out)
}

struct Identity {
    service: String,
    version: String,
    pod: String,
}

fn serve(args: &[String]) -> Result<()> {
    let env = |k: &str, d: &str| {
        std::env::var(k)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| d.to_owned())
    };
    let mut port = 9080u16;
    let mut id = Identity {
        service: env("SERVICE_NAME", "reviews"),
        version: env("VERSION", "v1"),
        pod: env("POD_NAME", "unknown"),
    };
    for (k, v) in flags(args)? {
        match k.as_str() {
            "port" => {
                port = v
                    .parse()
                    .with_context(|| format!("--port {v}: not a port"))?
            }
            "service" => id.service = v,
            "version" => id.version = v,
            _ => bail!("unknown flag --{k}\n{USAGE}"),
        }
    }
    let listener = TcpListener::bind(("::", port))
        .or_else(|_| TcpListener::bind(("0.0.0.0", port)))
        .with_context(|| format!("cannot listen on port {port}"))?;
    eprintln!(
        "bookstore {} {} listening on {port}",
        id.service, id.version
    );
    let id = Arc::new(id);
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let id = id.clone();
        std::thread::spawn(move || {
            let _ = connection(conn, &id);
        });
    }
    Ok(())
}

/// One request head.
struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    content_length: usize,
    close: bool,
}

fn read_head(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<Head>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (method, path, version) = (
        parts.next().unwrap_or("").to_owned(),
        parts.next().unwrap_or("/").to_owned(),
        parts.next().unwrap_or(""),
    );
    let mut head = Head {
        method,
        path,
        headers: Vec::new(),
        content_length: 0,
        close: version == "HTTP/1.0",
    };
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_owned());
            if k == "content-length" {
                head.content_length = v.parse().unwrap_or(0);
            }
            if k == "connection" && v.eq_ignore_ascii_case("close") {
                head.close = true;
            }
            head.headers.push((k, v));
        }
    }
    Ok(Some(head))
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn connection(conn: TcpStream, id: &Identity) -> std::io::Result<()> {
    let _ = conn.set_nodelay(true);
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    while let Some(head) = read_head(&mut r)? {
        let mut body = vec![0u8; head.content_length];
        r.read_exact(&mut body)?;
        let mut status = 200u16;
        if let Some(code) = head.path.strip_prefix("/status/") {
            status = code.parse().unwrap_or(400);
        }
        if let Some(ms) = head.path.strip_prefix("/delay/") {
            std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
        }
        let headers: Vec<String> = head
            .headers
            .iter()
            .map(|(k, v)| format!("{}:{}", json_str(k), json_str(v)))
            .collect();
        let text = format!(
            "{{\"service\":{},\"version\":{},\"pod\":{},\"method\":{},\"path\":{},\"headers\":{{{}}}}}\n",
            json_str(&id.service),
            json_str(&id.version),
            json_str(&id.pod),
            json_str(&head.method),
            json_str(&head.path),
            headers.join(",")
        );
        let reason = if status == 200 { "OK" } else { "Status" };
        write!(
            w,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Version: {}\r\n{}\r\n",
            text.len(),
            id.version,
            if head.close {
                "Connection: close\r\n"
            } else {
                ""
            }
        )?;
        w.write_all(text.as_bytes())?;
        w.flush()?;
        if head.close {
            break;
        }
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    sent: u64,
    errors: u64,
    by: BTreeMap<String, u64>,
    versions: BTreeMap<String, u64>,
    statuses: BTreeMap<String, u64>,
    latencies_us: Vec<u64>,
    first_error: Option<String>,
}

struct Target {
    host: String,
    port: u16,
    path: String,
}

fn parse_url(url: &str) -> Result<Target> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(']') || h.ends_with(']') => (
            h.to_owned(),
            p.parse().with_context(|| format!("{url}: bad port"))?,
        ),
        _ => (authority.to_owned(), 80),
    };
    Ok(Target {
        host,
        port,
        path: path.to_owned(),
    })
}

fn load(args: &[String]) -> Result<()> {
    let url = args.first().with_context(|| USAGE.to_owned())?;
    let target = Arc::new(parse_url(url)?);
    let (mut count, mut concurrency, mut rate, mut timeout) = (100u64, 1u64, 0f64, 10u64);
    let mut headers = Vec::new();
    for (k, v) in flags(&args[1..])? {
        match k.as_str() {
            "count" => count = v.parse().context("--count")?,
            "concurrency" => concurrency = v.parse::<u64>().context("--concurrency")?.max(1),
            "rate" => rate = v.parse().context("--rate")?,
            "header" => headers.push(v),
            "timeout" => timeout = v.parse().context("--timeout")?,
            _ => bail!("unknown flag --{k}\n{USAGE}"),
        }
    }
    let tally = Arc::new(Mutex::new(Tally::default()));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let headers = Arc::new(headers);
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (target, tally, next, headers) =
                (target.clone(), tally.clone(), next.clone(), headers.clone());
            std::thread::spawn(move || {
                let mut conn: Option<BufReader<TcpStream>> = None;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    if rate > 0.0 {
                        let due = started + Duration::from_secs_f64(i as f64 / rate);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                    let t0 = Instant::now();
                    let result =
                        request(&mut conn, &target, &headers, Duration::from_secs(timeout));
                    let us = t0.elapsed().as_micros() as u64;
                    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                    t.sent += 1;
                    match result {
                        Ok((status, version)) => {
                            t.latencies_us.push(us);
                            *t.by.entry(format!("{version} {status}")).or_default() += 1;
                            *t.versions.entry(version).or_default() += 1;
                            *t.statuses.entry(status.to_string()).or_default() += 1;
                        }
                        Err(e) => {
                            conn = None;
                            t.errors += 1;
                            t.first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
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
    println!(
        "{{\"sent\":{},\"ok\":{},\"errors\":{},\"versions\":{{{}}},\"statuses\":{{{}}},\"by\":{{{}}},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3},\"seconds\":{:.3},\"first_error\":{}}}",
        t.sent,
        t.sent - t.errors,
        t.errors,
        map(&t.versions),
        map(&t.statuses),
        map(&t.by),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0),
        started.elapsed().as_secs_f64(),
        t.first_error.as_deref().map_or("null".to_owned(), json_str),
    );
    Ok(())
}

/// One request on the kept-alive connection (made anew when there is none): the status
/// and the answering version (`X-Version`, `-` when absent).
fn request(
    conn: &mut Option<BufReader<TcpStream>>,
    t: &Target,
    headers: &[String],
    timeout: Duration,
) -> Result<(u16, String)> {
    if conn.is_none() {
        let addr = (t.host.trim_start_matches('[').trim_end_matches(']'), t.port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {}", t.host))?
            .next()
            .with_context(|| format!("{} has no address", t.host))?;
        let s = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connect {addr}"))?;
        s.set_read_timeout(Some(timeout))?;
        s.set_nodelay(true)?;
        *conn = Some(BufReader::new(s));
    }
    let Some(r) = conn.as_mut() else {
        bail!("no connection")
    };
    let mut req = format!("GET {} HTTP/1.1\r\nHost: {}:{}\r\n", t.path, t.host, t.port);
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    r.get_mut().write_all(req.as_bytes()).context("write")?;
    let mut line = String::new();
    if r.read_line(&mut line).context("read status")? == 0 {
        bail!("connection closed before the response");
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))?;
    let (mut len, mut chunked, mut close, mut version) = (0usize, false, false, "-".to_owned());
    loop {
        line.clear();
        r.read_line(&mut line).context("read headers")?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim();
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => len = v.parse().unwrap_or(0),
                "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                "connection" => close = v.eq_ignore_ascii_case("close"),
                "x-version" => version = v.to_owned(),
                _ => {}
            }
        }
    }
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim(), 16).context("chunk size")?;
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
        }
    } else {
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).context("read body")?;
    }
    if close {
        *conn = None;
    }
    Ok((status, version))
}
