//! The little HTTP/1.1 both sides speak: a request head parser for `serve`, a kept-alive
//! client for `load` and `get`, URLs, and JSON strings.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// One request head.
pub struct Head {
    pub method: String,
    pub path: String,
    /// Lower-case names, in order.
    pub headers: Vec<(String, String)>,
    pub content_length: usize,
    /// HTTP/1.0, or `Connection: close`.
    pub close: bool,
}

impl Head {
    /// The path without its query string.
    pub fn route(&self) -> &str {
        self.path.split(['?', '#']).next().unwrap_or("/")
    }
}

/// Reads one request head; `None` at a clean end of the connection.
pub fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<Head>> {
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

/// `s` as a JSON string literal.
pub fn json_str(s: &str) -> String {
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

/// Where `load` and `get` send their requests.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub path: String,
}

pub fn parse_url(url: &str) -> Result<Target> {
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
    if host.is_empty() {
        bail!("{url}: no host");
    }
    Ok(Target {
        host,
        port,
        path: path.to_owned(),
    })
}

/// What one response said.
#[derive(Debug, Default)]
pub struct Response {
    pub status: u16,
    /// `X-Version` (`-` when absent).
    pub version: String,
    /// `X-Pod` (`-` when absent).
    pub pod: String,
    /// The response carried `x-envoy-overloaded` (any value): the client's sidecar
    /// refused it at a connection-pool limit.
    pub overloaded: bool,
    /// The status line and the header lines, as received (without line ends).
    pub head: Vec<String>,
    pub body: Vec<u8>,
}

/// A kept-alive client connection to one target: made on first use, made anew after the
/// server closed it.
#[derive(Default)]
pub struct Client {
    conn: Option<BufReader<TcpStream>>,
    /// Connections made so far.
    pub connects: u64,
}

impl Client {
    /// One `GET` on the kept-alive connection (made anew when there is none). Any error
    /// drops the connection, so the next request makes a new one.
    pub fn get(&mut self, t: &Target, headers: &[String], timeout: Duration) -> Result<Response> {
        self.request("GET", t, headers, timeout)
    }

    /// One request with `method` and no body, as [`Client::get`].
    pub fn request(
        &mut self,
        method: &str,
        t: &Target,
        headers: &[String],
        timeout: Duration,
    ) -> Result<Response> {
        let r = self.exchange(method, t, headers, timeout);
        if r.is_err() {
            self.conn = None;
        }
        r.map_err(|e| {
            // A read or write timeout shows as EAGAIN ("Resource temporarily unavailable").
            let timed_out = e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>().is_some_and(|io| {
                    matches!(
                        io.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    )
                })
            });
            if timed_out {
                e.context(format!("no answer within {timeout:?}"))
            } else {
                e
            }
        })
    }

    fn exchange(
        &mut self,
        method: &str,
        t: &Target,
        headers: &[String],
        timeout: Duration,
    ) -> Result<Response> {
        if self.conn.is_none() {
            let addr = (t.host.trim_start_matches('[').trim_end_matches(']'), t.port)
                .to_socket_addrs()
                .with_context(|| format!("cannot resolve {}", t.host))?
                .next()
                .with_context(|| format!("{} has no address", t.host))?;
            let s = TcpStream::connect_timeout(&addr, timeout)
                .with_context(|| format!("connect {addr}"))?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            s.set_nodelay(true)?;
            self.connects += 1;
            self.conn = Some(BufReader::new(s));
        }
        let Some(r) = self.conn.as_mut() else {
            bail!("no connection")
        };
        let mut req = format!(
            "{method} {} HTTP/1.1\r\nHost: {}:{}\r\n",
            t.path, t.host, t.port
        );
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
        let mut resp = Response {
            status,
            version: "-".to_owned(),
            pod: "-".to_owned(),
            head: vec![line.trim_end().to_owned()],
            ..Response::default()
        };
        let (mut len, mut chunked, mut close) = (None, false, false);
        loop {
            line.clear();
            if r.read_line(&mut line).context("read headers")? == 0 {
                bail!("connection closed in the response head");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            resp.head.push(l.to_owned());
            if let Some((k, v)) = l.split_once(':') {
                let v = v.trim();
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => len = v.parse().ok(),
                    "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                    "connection" => close = v.eq_ignore_ascii_case("close"),
                    "x-version" => resp.version = v.to_owned(),
                    "x-pod" => resp.pod = v.to_owned(),
                    "x-envoy-overloaded" => resp.overloaded = true,
                    _ => {}
                }
            }
        }
        let bodiless = status / 100 == 1 || status == 204 || status == 304;
        if bodiless {
            // 1xx, 204 and 304 have no body, whatever the head says.
            len = Some(0);
        }
        if chunked && !bodiless {
            loop {
                line.clear();
                r.read_line(&mut line).context("read chunk size")?;
                let size = line.trim().split(';').next().unwrap_or("");
                let n = usize::from_str_radix(size, 16).context("chunk size")?;
                let mut chunk = vec![0u8; n + 2];
                r.read_exact(&mut chunk).context("read chunk")?;
                if n == 0 {
                    break;
                }
                chunk.truncate(n);
                resp.body.extend_from_slice(&chunk);
            }
        } else if let Some(len) = len {
            resp.body = vec![0u8; len];
            r.read_exact(&mut resp.body).context("read body")?;
        } else {
            // No length: the body runs to the end of the connection.
            r.read_to_end(&mut resp.body).context("read body")?;
            close = true;
        }
        if close {
            self.conn = None;
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("http://httpbin:8000/delay/10?x=1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            t,
            Target {
                host: "httpbin".into(),
                port: 8000,
                path: "/delay/10?x=1".into()
            }
        );
        let t = parse_url("http://[::1]:9080").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("[::1]", 9080, "/")
        );
        let t = parse_url("http://reviews/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.port, 80);
        assert!(parse_url("https://x/").is_err());
        assert!(parse_url("http://x:y/").is_err());
        assert!(parse_url("http:///").is_err());
    }

    #[test]
    fn heads_and_routes() {
        let text =
            "GET /delay/5?a=b HTTP/1.0\r\nHost: x\r\nContent-Length: 3\r\nX-A:  b \r\n\r\nabc";
        let mut r = std::io::Cursor::new(text.as_bytes());
        let h = read_head(&mut r)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no head"));
        assert_eq!(
            (h.method.as_str(), h.route(), h.content_length, h.close),
            ("GET", "/delay/5", 3, true)
        );
        assert_eq!(h.headers[2], ("x-a".to_owned(), "b".to_owned()));
        assert!(
            read_head(&mut std::io::Cursor::new(b""))
                .unwrap_or_else(|e| panic!("{e}"))
                .is_none()
        );
    }

    #[test]
    fn json_strings() {
        assert_eq!(json_str("a\"b\\c\n"), r#""a\"b\\c\u000a""#);
    }
}
