//! The local debug endpoints, on `--debug-addr` (127.0.0.1:15000, Envoy's admin port):
//!
//! - `GET /config_dump`: JSON of what the proxy holds now, key by key, as mesh-control
//!   sent it, with whether the stream is up.
//! - `GET /certs`: JSON of the workload identity (`--root-cert`): the SPIFFE id, the
//!   certificate's serial, validity and seconds to expiry, the mesh roots' subjects and
//!   fingerprints, the last failed certificate request.
//! - `GET /debug/route?host=H[&port=P][&path=/p][&method=GET][&header=k:v]...`: JSON of
//!   where such a request would go: the Service, the matched rule and VirtualService,
//!   the cluster and subset, the endpoint a pick chose now (for a `consistentHash`
//!   cluster, the one the request's key picks, and the key), the route's mirrors, and
//!   the faults, rewrites or redirect that apply. `host` may carry the port (`reviews:9080`); without one, the
//!   Service's only (or first HTTP) port.
//!
//! Same tiny HTTP/1.1 responder as the admin port ([`crate::admin`]): one request per
//! connection.

use std::sync::Arc;
use std::time::Duration;

use mesh_config::Key;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use crate::admin::{Request, Response, read_request};
use crate::control::{LOOKUP_WAIT, Store};
use crate::http::{RequestView, explain};
use crate::identity::IdentityStore;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the debug endpoints on `listener` until the process ends.
pub async fn serve(
    listener: TcpListener,
    store: Option<Arc<Store>>,
    identity: Option<Arc<IdentityStore>>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let store = store.clone();
                let identity = identity.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, store.as_deref(), identity.as_deref()).await {
                        debug!(error = %e, "debug request failed");
                    }
                });
            }
            Err(e) => {
                debug!(error = %e, "debug accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(
    mut stream: TcpStream,
    store: Option<&Store>,
    identity: Option<&IdentityStore>,
) -> std::io::Result<()> {
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut stream)).await {
        Err(_) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(Err(e))) => Response::text(400, format!("{e}\n")),
        Ok(Ok(Ok(req))) if req.path == "/certs" => certs(&req, identity),
        Ok(Ok(Ok(req))) => route(&req, store).await,
    };
    stream.write_all(&response.to_bytes()).await?;
    stream.shutdown().await
}

fn json(status: u16, v: &serde_json::Value) -> Response {
    let mut body = serde_json::to_string_pretty(v).unwrap_or_default();
    body.push('\n');
    Response {
        status,
        content_type: "application/json",
        body,
    }
}

/// `%XX` and `+` decoding of one query component.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET /certs`.
pub fn certs(req: &Request, identity: Option<&IdentityStore>) -> Response {
    if req.method != "GET" {
        return Response::text(405, "use GET\n");
    }
    match identity {
        Some(id) => json(200, &id.dump()),
        None => Response::text(
            404,
            "no workload identity (--root-cert): the proxy holds no certificate\n",
        ),
    }
}

/// Routes one debug request.
pub async fn route(req: &Request, store: Option<&Store>) -> Response {
    if req.method != "GET" {
        return Response::text(405, "use GET\n");
    }
    let (path, query) = (req.path.as_str(), req.query.as_str());
    let Some(store) = store else {
        return Response::text(
            404,
            "no control plane (--control-plane): the proxy holds no config\n",
        );
    };
    match path {
        "/config_dump" => json(200, &store.dump()),
        "/debug/route" => debug_route(query, store).await,
        _ => Response::text(
            404,
            "not found: try /config_dump, /certs or /debug/route?host=...\n",
        ),
    }
}

async fn debug_route(query: &str, store: &Store) -> Response {
    let mut host = None;
    let mut port: Option<u16> = None;
    let mut path = "/".to_owned();
    let mut method = "GET".to_owned();
    let mut headers = hyper::HeaderMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = decode(v);
        match k {
            "host" => host = Some(v),
            "port" => match v.parse() {
                Ok(p) => port = Some(p),
                Err(_) => return Response::text(400, format!("port={v}: not a port\n")),
            },
            "path" => path = v,
            "method" => method = v.to_ascii_uppercase(),
            "header" => {
                let Some((name, value)) = v.split_once(':') else {
                    return Response::text(400, format!("header={v}: expected name:value\n"));
                };
                let (Ok(n), Ok(val)) = (
                    hyper::header::HeaderName::from_bytes(
                        name.trim().to_ascii_lowercase().as_bytes(),
                    ),
                    hyper::header::HeaderValue::from_str(value.trim()),
                ) else {
                    return Response::text(400, format!("header={v}: not a valid header\n"));
                };
                headers.append(n, val);
            }
            other => {
                return Response::text(
                    400,
                    format!("unknown parameter {other:?} (host, port, path, method, header)\n"),
                );
            }
        }
    }
    let Some(host) = host else {
        return Response::text(
            400,
            "host= is required, e.g. /debug/route?host=reviews:9080&header=end-user:jason\n",
        );
    };
    let authority_port = mesh_config::key::strip_port(&host).len();
    if port.is_none() && authority_port < host.len() {
        port = host[authority_port + 1..].parse().ok();
    }
    let svc = match store.service_for_authority(&host) {
        Some(s) => Some(s),
        None => {
            let name = mesh_config::key::normalize_host(&host);
            let key = match name.parse() {
                Ok(ip) => Key::Address(ip),
                Err(_) => Key::Host(name),
            };
            match store.resolve(key, LOOKUP_WAIT).await {
                Some(crate::control::Answer::Service(s)) => Some(s),
                _ => None,
            }
        }
    };
    let Some(svc) = svc else {
        return json(
            404,
            &serde_json::json!({"host": host, "outcome": "not_in_mesh", "why": "no Service answers to this host; the request would pass through unchanged"}),
        );
    };
    let port = port.or_else(|| {
        let ports = &svc.service().ports;
        ports
            .iter()
            .find(|p| p.protocol.is_http())
            .or(ports.first())
            .map(|p| p.port)
    });
    let Some(port) = port else {
        return Response::text(404, format!("{} has no ports\n", svc.host()));
    };
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (path, None),
    };
    let view = RequestView {
        method: &method,
        scheme: "http",
        authority: &host,
        path: &path,
        query: query.as_deref(),
        headers: &headers,
    };
    let mut rng = fastrand::Rng::new();
    let e = explain(&svc, port, &view, &mut rng);
    json(
        200,
        &serde_json::to_value(&e).unwrap_or(serde_json::Value::Null),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn debug_route_reads_its_query() {
        let (store, _wanted) = Store::new([]);
        let head = b"GET /debug/route?host=nowhere.example:80&header=end-user%3Ajason HTTP/1.1\r\nHost: x\r\n\r\n";
        let (req, _) = crate::admin::parse_head(head).unwrap().unwrap();
        let r = route(&req, Some(&store)).await;
        // Parsed (a missing host would be a 400): not a mesh name.
        assert_eq!(r.status, 404, "{}", r.body);
        assert!(
            r.body.contains("not_in_mesh") && r.body.contains("nowhere.example:80"),
            "{}",
            r.body
        );
        let head = b"GET /debug/route?path=/x HTTP/1.1\r\n\r\n";
        let (req, _) = crate::admin::parse_head(head).unwrap().unwrap();
        let r = route(&req, Some(&store)).await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body.contains("host= is required"), "{}", r.body);
        let head = b"GET /config_dump HTTP/1.1\r\n\r\n";
        let (req, _) = crate::admin::parse_head(head).unwrap().unwrap();
        let r = route(&req, Some(&store)).await;
        assert_eq!(r.status, 200);
        assert!(r.body.contains("\"resources\""), "{}", r.body);
    }

    #[test]
    fn certs_needs_an_identity() {
        let (req, _) = crate::admin::parse_head(b"GET /certs HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        let r = certs(&req, None);
        assert_eq!(r.status, 404);
        assert!(r.body.contains("--root-cert"), "{}", r.body);
        let ca = crate::identity::testca::TestCa::new();
        let id = "spiffe://cluster.local/ns/shop/sa/web";
        let store = IdentityStore::fixed(ca.issue(id, 60), ca.roots(), "cluster.local");
        let r = certs(&req, Some(&store));
        assert_eq!((r.status, r.content_type), (200, "application/json"));
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["identity"], id);
        assert!(v["certificate"]["serial"].is_string(), "{v}");
    }

    #[test]
    fn query_components_decode() {
        assert_eq!(decode("end-user%3Ajason"), "end-user:jason");
        assert_eq!(decode("a+b"), "a b");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
        assert_eq!(decode("%2F"), "/");
    }
}
