//! Admin and metrics endpoints over a deliberately tiny HTTP/1.1 responder.
//!
//! Only three routes exist (`GET /healthz/ready`, `POST /quitquitquit`,
//! `GET /stats/prometheus`), each request is answered once and the connection closed, so
//! a full HTTP stack would cost more memory than the whole proxy is allowed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mesh_common::{PROXY_METRICS_PATH, PROXY_QUIT_PATH, PROXY_READY_PATH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info};

use crate::metrics::Metrics;

/// Largest request head we read.
const MAX_HEAD: usize = 8 * 1024;
/// Largest request body we read (and ignore).
const MAX_BODY: usize = 64 * 1024;
/// A client has this long to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A parsed request line (the only part we need) and the declared body length.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The target's path, without its query.
    pub path: String,
    /// What follows the `?`, undecoded (empty when none).
    pub query: String,
    pub content_length: usize,
}

/// Why a request could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("request head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("malformed request line")]
    BadRequestLine,
    #[error("unsupported HTTP version")]
    BadVersion,
    #[error("bad Content-Length header")]
    BadContentLength,
    #[error("request body larger than {MAX_BODY} bytes")]
    BodyTooLarge,
}

/// Parses a request head; `Ok(None)` means more bytes are needed. On success also
/// returns the head's length in bytes.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, HttpError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() >= MAX_HEAD {
            Err(HttpError::HeadTooLarge)
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| HttpError::BadRequestLine)?;
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::BadRequestLine);
    };
    if method.is_empty() || !target.starts_with('/') {
        return Err(HttpError::BadRequestLine);
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(HttpError::BadVersion);
    }
    let mut content_length = 0;
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            content_length = value
                .trim()
                .parse()
                .map_err(|_| HttpError::BadContentLength)?;
        }
    }
    if content_length > MAX_BODY {
        return Err(HttpError::BodyTooLarge);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Some((
        Request {
            method: method.to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
            content_length,
        },
        end + 4,
    )))
}

/// An answer: status, content type and body.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    /// The bytes on the wire; the connection is closed after them.
    pub fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            503 => "Service Unavailable",
            _ => "Unknown",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }
}

/// What the endpoints read and act on.
#[derive(Debug)]
pub struct AdminState {
    /// Set once every listener is bound.
    pub ready: AtomicBool,
    pub metrics: Arc<Metrics>,
    /// The request metrics (empty without a control plane).
    pub http: Arc<crate::http::HttpMetrics>,
    /// Per-cluster circuit-breaking and outlier state (`envoy_cluster_*`).
    pub lb: Arc<crate::http::LbStates>,
    /// Sending `true` starts the drain.
    pub drain: watch::Sender<bool>,
    /// Set on SIGTERM: not ready any more, though still accepting until the drain.
    pub terminating: AtomicBool,
    /// The workload identity (`--root-cert`): not ready until it holds a certificate.
    pub identity: Option<Arc<crate::identity::IdentityStore>>,
    /// The DNS proxy's counters (`--dns-capture`).
    pub dns: Option<Arc<crate::dns::DnsMetrics>>,
}

impl AdminState {
    /// Draining, or about to (terminating): readiness says 503.
    pub fn draining(&self) -> bool {
        *self.drain.borrow() || self.terminating.load(Ordering::Acquire)
    }
}

/// Which set of routes a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Admin,
    Metrics,
}

/// Routes one request: a pure function of the request and the state.
pub fn route(endpoint: Endpoint, req: &Request, state: &AdminState) -> Response {
    match (endpoint, req.path.as_str()) {
        (Endpoint::Admin, PROXY_READY_PATH) => {
            if req.method != "GET" && req.method != "HEAD" {
                return Response::text(405, "use GET\n");
            }
            if state.draining() {
                return Response::text(503, "draining\n");
            }
            if let Some(id) = &state.identity
                && !id.has_cert()
            {
                let why = id
                    .last_error()
                    .unwrap_or_else(|| "first request under way".into());
                return Response::text(
                    503,
                    format!("not ready: no workload certificate yet ({why})\n"),
                );
            }
            if state.ready.load(Ordering::Acquire) {
                Response::text(200, "ready\n")
            } else {
                Response::text(503, "not ready\n")
            }
        }
        (Endpoint::Admin, PROXY_QUIT_PATH) => {
            if req.method != "POST" {
                return Response::text(405, "use POST\n");
            }
            info!("drain requested on {PROXY_QUIT_PATH}");
            state.drain.send_replace(true);
            Response::text(200, "draining\n")
        }
        (Endpoint::Metrics, PROXY_METRICS_PATH) => {
            if req.method != "GET" && req.method != "HEAD" {
                return Response::text(405, "use GET\n");
            }
            Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: {
                    let mut body = state.metrics.render();
                    state.http.render(&mut body);
                    state.lb.render_clusters(&mut body);
                    if let Some(id) = &state.identity {
                        id.render_metrics(&mut body);
                    }
                    if let Some(dns) = &state.dns {
                        dns.render(&mut body);
                    }
                    body
                },
            }
        }
        _ => Response::text(404, "not found\n"),
    }
}

/// Serves `endpoint` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, endpoint: Endpoint, state: Arc<AdminState>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let state = state.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, endpoint, &state).await {
                        debug!(error = %e, ?endpoint, "admin request failed");
                    }
                });
            }
            Err(e) => {
                debug!(error = %e, ?endpoint, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(
    mut stream: TcpStream,
    endpoint: Endpoint,
    state: &AdminState,
) -> std::io::Result<()> {
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut stream)).await {
        Err(_) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(Err(e))) => Response::text(400, format!("{e}\n")),
        Ok(Ok(Ok(req))) => {
            let mut r = route(endpoint, &req, state);
            if req.method == "HEAD" {
                r.body.clear();
            }
            r
        }
    };
    stream.write_all(&response.to_bytes()).await?;
    stream.shutdown().await
}

pub async fn read_request(stream: &mut TcpStream) -> std::io::Result<Result<Request, HttpError>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_head(&buf) {
            Ok(None) => continue,
            Err(e) => return Ok(Err(e)),
            Ok(Some((req, head_len))) => {
                // Read (and drop) the body, so closing does not reset the client.
                let mut remaining = req.content_length.saturating_sub(buf.len() - head_len);
                while remaining > 0 {
                    let n = stream.read(&mut chunk).await?;
                    if n == 0 {
                        break;
                    }
                    remaining = remaining.saturating_sub(n);
                }
                return Ok(Ok(req));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Identity;

    fn state() -> AdminState {
        AdminState {
            ready: AtomicBool::new(false),
            metrics: Arc::new(Metrics::new(Identity::unknown())),
            http: Arc::new(crate::http::HttpMetrics::new(&Identity::unknown())),
            lb: Arc::default(),
            drain: watch::channel(false).0,
            terminating: AtomicBool::new(false),
            identity: None,
            dns: None,
        }
    }

    fn req(method: &str, path: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            query: String::new(),
            content_length: 0,
        }
    }

    #[test]
    fn parses_heads() {
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        let (r, len) =
            parse_head(b"POST /quitquitquit?x=1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
                .unwrap()
                .unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/quitquitquit");
        assert_eq!(r.content_length, 3);
        assert_eq!(len, 54);
        assert_eq!(parse_head(b"GET /\r\n\r\n"), Err(HttpError::BadRequestLine));
        assert_eq!(
            parse_head(b"GET / HTTP/2\r\n\r\n"),
            Err(HttpError::BadVersion)
        );
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\ncontent-length: x\r\n\r\n"),
            Err(HttpError::BadContentLength)
        );
        assert_eq!(
            parse_head(&vec![b'a'; MAX_HEAD]),
            Err(HttpError::HeadTooLarge)
        );
    }

    #[test]
    fn readiness_follows_state() {
        let s = state();
        assert_eq!(
            route(Endpoint::Admin, &req("GET", PROXY_READY_PATH), &s).status,
            503
        );
        s.ready.store(true, Ordering::Release);
        assert_eq!(
            route(Endpoint::Admin, &req("GET", PROXY_READY_PATH), &s).status,
            200
        );
        assert_eq!(
            route(Endpoint::Admin, &req("POST", PROXY_READY_PATH), &s).status,
            405
        );
        s.drain.send_replace(true);
        let r = route(Endpoint::Admin, &req("GET", PROXY_READY_PATH), &s);
        assert_eq!((r.status, r.body.as_str()), (503, "draining\n"));
    }

    #[test]
    fn with_an_identity_readiness_waits_for_the_certificate() {
        use crate::identity::testca::TestCa;
        let ca = TestCa::new();
        let id = "spiffe://cluster.local/ns/shop/sa/web";
        let store =
            crate::identity::IdentityStore::fixed(ca.issue(id, 3600), ca.roots(), "cluster.local");
        let mut s = state();
        s.ready.store(true, Ordering::Release);
        s.identity = Some(store);
        assert_eq!(
            route(Endpoint::Admin, &req("GET", PROXY_READY_PATH), &s).status,
            200
        );
        let m = route(Endpoint::Metrics, &req("GET", PROXY_METRICS_PATH), &s);
        assert!(
            m.body.contains("mesh_proxy_cert_expiry_seconds 3"),
            "{}",
            m.body
        );
    }

    #[test]
    fn quit_starts_drain_only_on_post() {
        let s = state();
        assert_eq!(
            route(Endpoint::Admin, &req("GET", PROXY_QUIT_PATH), &s).status,
            405
        );
        assert!(!s.draining());
        assert_eq!(
            route(Endpoint::Admin, &req("POST", PROXY_QUIT_PATH), &s).status,
            200
        );
        assert!(s.draining());
    }

    #[test]
    fn routes_are_per_endpoint() {
        let s = state();
        let m = route(Endpoint::Metrics, &req("GET", PROXY_METRICS_PATH), &s);
        assert_eq!(m.status, 200);
        assert!(m.body.contains("mesh_proxy_active_connections"));
        assert!(m.content_type.contains("version=0.0.4"));
        assert_eq!(
            route(Endpoint::Admin, &req("GET", PROXY_METRICS_PATH), &s).status,
            404
        );
        assert_eq!(
            route(Endpoint::Metrics, &req("POST", PROXY_QUIT_PATH), &s).status,
            404
        );
    }

    #[test]
    fn response_bytes() {
        let r = Response::text(200, "ok\n").to_bytes();
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 3\r\n"));
        assert!(text.ends_with("\r\n\r\nok\n"));
    }

    #[tokio::test]
    async fn serves_over_a_socket() {
        let s = Arc::new(state());
        s.ready.store(true, Ordering::Release);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve(l, Endpoint::Admin, s.clone()));
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"POST /quitquitquit HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
            .await
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        assert!(s.draining());
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"garbage\r\n\r\n").await.unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    }
}
